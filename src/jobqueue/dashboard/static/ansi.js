"use strict";
// Terminal output to DOM nodes: SGR colours and styles (16, 256 and 24-bit colours, bold,
// faint, italic, underline, inverse), other escape sequences dropped, an escape sequence
// split across two chunks kept for the next one.  Text goes in as text nodes: never HTML.

class Ansi {
  constructor(cls) {
    this.cls = cls;  // the stream's class (fd1, fd2)
    this.rest = "";
    this.reset();
  }

  reset() { this.fg = null; this.bg = null; this.bold = false; this.faint = false; this.italic = false;
            this.underline = false; this.inverse = false; }

  static color256(n) {
    const base = ["#000000", "#cd0000", "#00cd00", "#cdcd00", "#0000ee", "#cd00cd", "#00cdcd", "#e5e5e5",
                  "#7f7f7f", "#ff0000", "#00ff00", "#ffff00", "#5c5cff", "#ff00ff", "#00ffff", "#ffffff"];
    if (n < 16) return base[n];
    if (n < 232) {
      n -= 16;
      const v = [0, 95, 135, 175, 215, 255];
      return `rgb(${v[Math.floor(n / 36)]},${v[Math.floor(n / 6) % 6]},${v[n % 6]})`;
    }
    const g = 8 + (n - 232) * 10;
    return `rgb(${g},${g},${g})`;
  }

  // A colour moved to the other side (foreground <-> background), for inverse video.
  static swap(c, side) {
    if (!c) return null;
    if (c.startsWith("fg:") || c.startsWith("bg:")) return side + ":" + c.slice(3);
    const n = parseInt(c.slice(2), 10);
    if (n >= 90) return side + ":" + Ansi.color256(n - 90 + 8);
    return "a-" + (side === "fg" ? n - 10 : n + 10);
  }

  sgr(params) {
    const codes = params === "" ? [0] : params.split(";").map(x => parseInt(x || "0", 10));
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) this.reset();
      else if (c === 1) this.bold = true;
      else if (c === 2) this.faint = true;
      else if (c === 3) this.italic = true;
      else if (c === 4) this.underline = true;
      else if (c === 7) this.inverse = true;
      else if (c === 22) { this.bold = false; this.faint = false; }
      else if (c === 23) this.italic = false;
      else if (c === 24) this.underline = false;
      else if (c === 27) this.inverse = false;
      else if ((c >= 30 && c <= 37) || (c >= 90 && c <= 97)) this.fg = "a-" + c;
      else if (c === 39) this.fg = null;
      else if ((c >= 40 && c <= 47)) this.bg = "a-" + c;
      else if (c >= 100 && c <= 107) this.bg = "bg:" + Ansi.color256(c - 100 + 8);
      else if (c === 49) this.bg = null;
      else if (c === 38 || c === 48) {
        let color = null;
        if (codes[i + 1] === 5 && i + 2 < codes.length) { color = Ansi.color256(codes[i + 2] & 255); i += 2; }
        else if (codes[i + 1] === 2 && i + 4 < codes.length) {
          color = `rgb(${codes[i + 2] & 255},${codes[i + 3] & 255},${codes[i + 4] & 255})`; i += 4;
        }
        if (color) { if (c === 38) this.fg = "fg:" + color; else this.bg = "bg:" + color; }
      }
    }
  }

  span(text) {
    const classes = [this.cls];
    const style = [];
    let fg = this.fg, bg = this.bg;
    if (this.inverse) [fg, bg] = [Ansi.swap(bg, "fg") || "a-30", Ansi.swap(fg, "bg") || "a-47"];
    for (const c of [fg, bg]) {
      if (!c) continue;
      if (c.startsWith("fg:")) style.push("color:" + c.slice(3));
      else if (c.startsWith("bg:")) style.push("background:" + c.slice(3));
      else classes.push(c);
    }
    if (this.bold) classes.push("a-b");
    if (this.faint) classes.push("a-f");
    if (this.italic) classes.push("a-i");
    if (this.underline) classes.push("a-u");
    const node = document.createElement("span");
    node.className = classes.join(" ");
    if (style.length) node.style.cssText = style.join(";");
    node.textContent = text;
    return node;
  }

  // Nodes for the next chunk of text.
  feed(text) {
    text = this.rest + text;
    this.rest = "";
    const partial = text.match(/\x1b(\[[0-9;?]*|\][^\x07\x1b]*)?$/);
    if (partial) { this.rest = partial[0]; text = text.slice(0, partial.index); }
    text = text.replace(/\r\n/g, "\n").replace(/\x1b\][^\x07\x1b]*(\x07|\x1b\\)/g, "");
    const nodes = [];
    const re = /\x1b\[([0-9;?]*)([A-Za-z])|\x1b[()][A-Za-z0-9]|\x1b[=>78]/g;
    let at = 0, m;
    while ((m = re.exec(text)) !== null) {
      if (m.index > at) nodes.push(this.span(text.slice(at, m.index)));
      if (m[2] === "m") this.sgr(m[1]);
      at = re.lastIndex;
    }
    if (at < text.length) nodes.push(this.span(text.slice(at)));
    return nodes;
  }
}
