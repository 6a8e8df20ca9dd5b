"""``jq --stage DIR``: send a snapshot of a directory to the worker, bring the results back.

Pure parts (no files, sockets or clock): :mod:`.manifest` (the Merkle tree of
per-directory digests and its canonical encoding), :mod:`.paths` (what a name
or a symlink may be), :mod:`.cachepolicy` (the worker's blob cache decisions),
:mod:`.fetchplan` (which results come back, and which local files are kept).
Shells: :mod:`.scan` (the client walks DIR, with a stat cache), :mod:`.blobstore`
(content-addressed files on the worker), :mod:`.materialise` (a job's private
directory from the cache, and the client writing results back safely).

jq imports this package only when ``--stage`` is given: it hashes and walks.
"""
