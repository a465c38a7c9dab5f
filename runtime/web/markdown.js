/* chatfile page: a small Markdown renderer that builds DOM nodes.
 *
 * Safety rule: text from the model or the user never goes through an HTML parser.
 * Every piece of text becomes a Text node (createTextNode / textContent), which is
 * the DOM form of "escape first": `<script>` stays the seven characters `<script>`.
 * Formatting (bold, code, links, ...) is recognised in the plain text and turned
 * into elements we create ourselves. Links are kept only for http, https and mailto.
 *
 * Exposes window.ChatMarkdown = { render(text) -> DocumentFragment, safeUrl(url), copyText,
 * showCopied(button), announce(text) } (the last three: the page's Copy buttons and live region).
 */
(function () {
  "use strict";

  var SAFE_PROTOCOLS = { "http:": true, "https:": true, "mailto:": true };
  var COPIED_MS = 1500; // how long a Copy button says "Copied"

  /* Returns a normalised href when `raw` is an absolute http(s)/mailto URL, else null.
   * The prefix test runs on the raw text, before the URL parser strips tabs or
   * newlines, so "java\tscript:" and relative URLs are both refused. */
  function safeUrl(raw) {
    var s = String(raw || "").trim();
    if (!/^(https?:\/\/[^\s]|mailto:[^\s])/i.test(s)) return null;
    var url;
    try { url = new URL(s); } catch (e) { return null; }
    return SAFE_PROTOCOLS[url.protocol] ? url.href : null;
  }

  // Blocks of prose take their direction from their own first strong character, so an
  // Arabic or Hebrew paragraph reads right to left among English ones. Code stays LTR.
  // Set once a block is whole (see render): Chromium works out an element's direction
  // again at every child added to it, so a line of 30,000 code spans took 10 s.
  var AUTO_DIR = "p, li, h1, h2, h3, h4, h5, h6, td, th, blockquote";

  function el(tag, className) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  /* ---------- inline formatting ---------- */

  // Sticky regexes: each is tried exactly at position i (lastIndex = i).
  var RE_ESCAPE = /\\([\\`*_{}\[\]()#+\-.!~>|])/y;
  var RE_CODE = /(`+)([\s\S]*?[^`])\1(?!`)/y;
  var RE_STRONG_EM = /(\*\*\*|___)(?=\S)([\s\S]*?\S)\1(?![*_])/y;
  var RE_STRONG = /(\*\*|__)(?=\S)([\s\S]*?\S)\1/y;
  var RE_EM = /([*_])(?=[^\s*_])([\s\S]*?[^\s\\])\1(?![*_])/y;
  var RE_DEL = /~~(?=\S)([\s\S]*?\S)~~/y;
  // A URL may hold balanced parentheses, one level deep (Wikipedia's "Foo_(bar)").
  var RE_LINK = /\[([^\[\]\n]*)\]\(\s*<?((?:[^\s()<>]|\([^\s()<>]*\))*)>?(?:\s+"[^"\n]*")?\s*\)/y;
  var RE_ANGLE_LINK = /<((?:https?:\/\/|mailto:)[^\s<>]+)>/iy;
  var RE_AUTOLINK = /(?:https?:\/\/|mailto:)(?:[^\s<>()"'`]|\([^\s<>()"'`]*\))*(?:[^\s<>()"'`.,;:!?*_~]|\([^\s<>()"'`]*\))/iy;

  function at(re, src, i) {
    re.lastIndex = i;
    return re.exec(src);
  }

  function isWordChar(ch) {
    return !!ch && /[A-Za-z0-9]/.test(ch);
  }

  function makeLink(href, parent) {
    var a = el("a");
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    parent.appendChild(a);
    return a;
  }

  /* Appends the inline content of `src` to `parent`. `inLink` stops links nesting. */
  function renderInline(src, parent, inLink) {
    var buf = "";
    function flush() {
      if (buf) { parent.appendChild(document.createTextNode(buf)); buf = ""; }
    }
    // Where a delimiter was found to have no closer at all: whether a closer is valid does
    // not depend on its opener, so every later opener of the same kind fails as well.
    // Without this, a long line of unclosed `_` or `*` took quadratic time (60 KB: 3 s).
    var noCloser = {};
    function tryAt(kind, re, openerOk) {
      if (noCloser[kind] !== undefined && i >= noCloser[kind]) return null;
      var found = at(re, src, i);
      if (!found && openerOk) noCloser[kind] = i;
      return found;
    }
    function ticksAt(k) {
      var n = 0;
      while (src[k + n] === "`") n++;
      return n;
    }
    var i = 0, m, node;
    while (i < src.length) {
      var c = src[i];
      if (c === "\\" && (m = at(RE_ESCAPE, src, i))) {
        buf += m[1]; i += m[0].length; continue;
      }
      if (c === "`" && (m = tryAt("code" + ticksAt(i), RE_CODE, true))) {
        flush();
        node = el("code");
        // One space of padding on each side lets a code span hold a backtick.
        node.textContent = m[2].replace(/^ ([\s\S]*) $/, "$1");
        parent.appendChild(node);
        i += m[0].length; continue;
      }
      // ***text***: emphasis around strong, as CommonMark reads it.
      if ((c === "*" || c === "_") &&
          (m = tryAt("strongem" + c, RE_STRONG_EM,
                     src[i + 1] === c && src[i + 2] === c && /\S/.test(src[i + 3] || ""))) &&
          !(c === "_" && (isWordChar(src[i - 1]) || isWordChar(src[i + m[0].length])))) {
        flush();
        node = el("em");
        var inner = el("strong");
        renderInline(m[2], inner, inLink);
        node.appendChild(inner);
        parent.appendChild(node);
        i += m[0].length; continue;
      }
      if ((c === "*" || c === "_") &&
          (m = tryAt("strong" + c, RE_STRONG, src[i + 1] === c && /\S/.test(src[i + 2] || ""))) &&
          !(c === "_" && (isWordChar(src[i - 1]) || isWordChar(src[i + m[0].length])))) {
        flush();
        node = el("strong");
        renderInline(m[2], node, inLink);
        parent.appendChild(node);
        i += m[0].length; continue;
      }
      // Underscores inside words (snake_case) are not emphasis.
      if ((c === "*" || c === "_") && (m = tryAt("em" + c, RE_EM, /[^\s*_]/.test(src[i + 1] || ""))) &&
          !(c === "_" && (isWordChar(src[i - 1]) || isWordChar(src[i + m[0].length])))) {
        flush();
        node = el("em");
        renderInline(m[2], node, inLink);
        parent.appendChild(node);
        i += m[0].length; continue;
      }
      if (c === "~" && (m = tryAt("del", RE_DEL, src[i + 1] === "~" && /\S/.test(src[i + 2] || "")))) {
        flush();
        node = el("del");
        renderInline(m[1], node, inLink);
        parent.appendChild(node);
        i += m[0].length; continue;
      }
      if (c === "[" && !inLink && (m = at(RE_LINK, src, i))) {
        var href = safeUrl(m[2]);
        if (href) {
          flush();
          renderInline(m[1] || m[2], makeLink(href, parent), true);
          i += m[0].length; continue;
        }
        // Unsafe or relative target: the whole thing stays visible as plain text.
        buf += m[0]; i += m[0].length; continue;
      }
      // <https://…>: a link, shown without its angle brackets.
      if (c === "<" && !inLink && (m = at(RE_ANGLE_LINK, src, i))) {
        var angled = safeUrl(m[1]);
        if (angled) {
          flush();
          makeLink(angled, parent).textContent = m[1];
          i += m[0].length; continue;
        }
      }
      if ((c === "h" || c === "H" || c === "m" || c === "M") && !inLink &&
          !isWordChar(src[i - 1]) && (m = at(RE_AUTOLINK, src, i))) {
        var auto = safeUrl(m[0]);
        if (auto) {
          flush();
          makeLink(auto, parent).textContent = m[0];
          i += m[0].length; continue;
        }
      }
      buf += c; i += 1;
    }
    flush();
  }

  /* ---------- blocks ---------- */

  // Any indentation: there are no indented code blocks here, and a fence under a list
  // item is indented by the item's width.
  var RE_FENCE = /^([ \t]*)(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
  var RE_HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  var RE_HR = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
  var RE_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  var RE_QUOTE = /^ {0,3}>\s?(.*)$/;

  function codeBlock(code, lang) {
    var wrap = el("div", "code-block");
    wrap.dir = "ltr"; // even inside a right-to-left message
    var head = el("div", "code-head");
    var label = el("span", "code-lang");
    label.textContent = lang || "code";
    var copy = el("button", "copy-code");
    copy.type = "button";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy code");
    copy.setAttribute("data-testid", "copy-code");
    var pre = el("pre");
    var codeEl = el("code");
    codeEl.textContent = code;
    pre.appendChild(codeEl);
    copy.addEventListener("click", function () {
      copyText(code).then(function () { showCopied(copy); });
    });
    head.appendChild(label);
    head.appendChild(copy);
    wrap.appendChild(head);
    wrap.appendChild(pre);
    return wrap;
  }

  /* A Copy button that worked says so for a moment, and a screen reader hears it (its
   * name, "Copy code", stays: the change of its text alone was not said). */
  function showCopied(button) {
    button.textContent = "Copied";
    announce("Copied");
    setTimeout(function () { button.textContent = "Copy"; }, COPIED_MS);
  }

  /* Says `text` to screen readers through the page's live region (#announce in
   * index.html); the same words again are said again. */
  function announce(text) {
    var live = document.getElementById("announce");
    if (live) live.textContent = live.textContent === text ? text + "\u00a0" : text;
  }

  /* Clipboard API where allowed (localhost is a secure context), else a hidden textarea. */
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { return legacyCopy(text); });
    }
    return Promise.resolve(legacyCopy(text));
  }

  function legacyCopy(text) {
    var ta = el("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.style.position = "fixed";
    ta.style.opacity = "0";
    document.body.appendChild(ta);
    ta.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing more we can do */ }
    document.body.removeChild(ta);
  }

  /* The fenced code block whose opening fence `m` (RE_FENCE's match) is lines[i]:
   * {node, next}. Its lines lose as much indentation as the opening fence has, as in
   * CommonMark, so that code under a list item is copied without the item's indent. An
   * unclosed fence (still streaming) runs to the end of the text; one with nothing in it
   * yet is no block at all (node null): a reply stopped just after its "```" showed an
   * empty code box, and a streaming one showed it until the first line of code came. */
  function fenced(lines, i, m) {
    var fence = m[2], body = [], closed = false;
    var close = new RegExp("^[ \\t]*" + fence[0] + "{" + fence.length + ",}\\s*$");
    var indent = new RegExp("^[ \\t]{0," + m[1].length + "}");
    for (i += 1; i < lines.length; i++) {
      if (close.test(lines[i])) { i += 1; closed = true; break; }
      body.push(lines[i].replace(indent, ""));
    }
    var code = body.join("\n");
    if (!closed && !code.trim()) return { node: null, next: i };
    return { node: codeBlock(code, m[3]), next: i };
  }

  /* Lines of one paragraph keep their line breaks: models use single newlines on purpose. */
  function paragraph(lines) {
    var p = el("p");
    lines.forEach(function (line, k) {
      if (k > 0) p.appendChild(el("br"));
      renderInline(line, p, false);
    });
    return p;
  }

  function indentWidth(ws) {
    return ws.replace(/\t/g, "    ").length;
  }

  /* Builds nested <ul>/<ol> from consecutive list lines; deeper indent = nested list. */
  function list(lines, start) {
    var root = null;
    var stack = []; // {indent, listEl, lastItem}
    var i = start;
    while (i < lines.length) {
      var line = lines[i];
      var m = RE_ITEM.exec(line);
      if (!m && /^\s*$/.test(line)) {
        // Blank lines between items, or before an item's indented code, as models often
        // write steps: the list goes on (one list, numbered on, the code in its step).
        var j = i + 1;
        while (j < lines.length && /^\s*$/.test(lines[j])) j++;
        if (j < lines.length && stack.length && listGoesOn(lines[j], stack[0])) { i = j; continue; }
        break;
      }
      if (!m) {
        // A non-blank, indented line continues the previous item's text.
        if (stack.length && /^\s+\S/.test(line)) {
          var top = stack[stack.length - 1];
          var fence = RE_FENCE.exec(line);
          if (fence) { // code inside the item
            var code = fenced(lines, i, fence);
            if (code.node) top.lastItem.appendChild(code.node);
            i = code.next; continue;
          }
          // A pipe table inside the item: the same rules as a top-level one, and its
          // delimiter row is indented too (an unindented line ends the list).
          var found = /^\s/.test(lines[i + 1] || "") && tableStart(lines, i);
          if (found) {
            var tab = table(lines, i, found, true);
            top.lastItem.appendChild(tab.node);
            i = tab.next; continue;
          }
          // After a table or code (blocks) the text needs no line break of its own.
          if (!isBlock(top.lastItem.lastChild)) top.lastItem.appendChild(el("br"));
          renderInline(line.trim(), top.lastItem, false);
          i += 1; continue;
        }
        break;
      }
      var indent = indentWidth(m[1]);
      var ordered = /\d/.test(m[2]);
      while (stack.length && indent < stack[stack.length - 1].indent) stack.pop();
      var level = stack[stack.length - 1];
      // "- a" followed by "1. b" at the top level: a new list, not one mixed list.
      if (stack.length === 1 && indent === level.indent && ordered !== level.ordered) break;
      if (!level || indent > level.indent) {
        var listEl = el(ordered ? "ol" : "ul");
        if (ordered) {
          var n = parseInt(m[2], 10);
          if (n !== 1) listEl.start = n;
        }
        if (level) level.lastItem.appendChild(listEl); else root = listEl;
        level = { indent: indent, listEl: listEl, lastItem: null, ordered: ordered };
        stack.push(level);
      }
      var li = el("li");
      renderInline(m[3], li, false);
      level.listEl.appendChild(li);
      level.lastItem = li;
      i += 1;
    }
    return { node: root, next: i };
  }

  /* Whether `line`, after a blank line, still belongs to the list whose outermost level
   * is `root`: an item as deep or deeper (at root's depth, of the same kind: "1." after
   * "-" starts a new list), or text indented under root's items (2 columns or more in
   * from their markers; a paragraph indented by 1 is the text after the list). */
  function listGoesOn(line, root) {
    var m = RE_ITEM.exec(line);
    if (m) {
      var indent = indentWidth(m[1]);
      return indent > root.indent || (indent === root.indent && /\d/.test(m[2]) === root.ordered);
    }
    var lead = /^(\s*)\S/.exec(line);
    return !!lead && indentWidth(lead[1]) >= root.indent + 2;
  }

  /* ---------- tables (GitHub's pipe tables) ---------- */

  /* The column alignments of a delimiter row ("| :-- | :-: | --: | --- |"), or null
   * when `line` is not one. A pipe is required, so "---" alone stays a rule. */
  function tableDelimiter(line) {
    if (line.indexOf("|") < 0) return null;
    var s = line.trim();
    if (s[0] === "|") s = s.slice(1);
    if (s[s.length - 1] === "|") s = s.slice(0, -1);
    var parts = s.split("|"), aligns = [];
    for (var k = 0; k < parts.length; k++) {
      var m = /^\s*(:?)-+(:?)\s*$/.exec(parts[k]);
      if (!m) return null;
      aligns.push(m[1] && m[2] ? "center" : m[2] ? "right" : m[1] ? "left" : "");
    }
    return aligns;
  }

  /* The cells of a table row, trimmed. A pipe splits cells unless it is escaped (`\|`) or
   * inside a code span; an escaped pipe inside a code span shows as a plain pipe (as on
   * GitHub). Other escapes stay in the cell for renderInline. Code spans are found with
   * renderInline's own pattern and shortcut, so both read a row the same way. */
  function tableCells(line) {
    var s = line.trim();
    var cells = [], cur = "", i = s[0] === "|" ? 1 : 0, start = i, m;
    var noCloser = {}, closed = false;
    while (i < s.length) {
      var c = s[i];
      closed = false;
      if (c === "\\") { i += 2; continue; }
      if (c === "`") {
        var n = 0;
        while (s[i + n] === "`") n++;
        var key = "code" + n;
        m = noCloser[key] !== undefined && i >= noCloser[key] ? null : at(RE_CODE, s, i);
        if (!m) { noCloser[key] = i; i += 1; continue; }
        cur += s.slice(start, i) + m[0].replace(/\\\|/g, "|");
        i += m[0].length; start = i;
        continue;
      }
      if (c === "|") {
        cells.push((cur + s.slice(start, i)).trim());
        cur = ""; i += 1; start = i; closed = true;
        continue;
      }
      i += 1;
    }
    // A closing pipe ends the row; without one, the rest is the last cell.
    if (!closed || !cells.length) cells.push((cur + s.slice(start)).trim());
    return cells;
  }

  /* A table starts at lines[i] when it has a pipe and the next line is a delimiter row
   * with as many cells. While a reply streams in, the delimiter row counts only once it
   * is complete (its closing pipe or the next line has arrived), so a half-written one
   * stays a paragraph instead of a table whose columns or alignment still change. */
  function tableStart(lines, i) {
    if (i + 1 >= lines.length || lines[i].indexOf("|") < 0) return null;
    var next = lines[i + 1];
    if (i + 2 >= lines.length && !/\|\s*$/.test(next)) return null;
    var aligns = tableDelimiter(next);
    if (!aligns) return null;
    var head = tableCells(lines[i]);
    return head.length === aligns.length ? { head: head, aligns: aligns } : null;
  }

  /* Body rows run until a blank line, a line without a pipe, or another block; in a list
   * item also until a line that is not indented (it ends the list). */
  function endsTable(line, inItem) {
    return /^\s*$/.test(line) || line.indexOf("|") < 0 || RE_FENCE.test(line) ||
      RE_HEADING.test(line) || RE_QUOTE.test(line) || RE_ITEM.test(line) ||
      (inItem && !/^\s/.test(line));
  }

  function isBlock(node) {
    return !!node && (node.className === "table-wrap" || node.className === "code-block");
  }

  function tableRow(cells, aligns, tag) {
    var tr = el("tr");
    for (var k = 0; k < aligns.length; k++) { // short rows are padded, extra cells dropped
      var cell = el(tag);
      if (aligns[k]) cell.style.textAlign = aligns[k];
      if (k < cells.length) renderInline(cells[k], cell, false);
      tr.appendChild(cell);
    }
    return tr;
  }

  /* Builds the table that tableStart found at lines[i]; the wrapper scrolls sideways. */
  function table(lines, i, found, inItem) {
    var wrap = el("div", "table-wrap");
    var tableEl = el("table");
    var thead = el("thead");
    thead.appendChild(tableRow(found.head, found.aligns, "th"));
    tableEl.appendChild(thead);
    var tbody = el("tbody");
    i += 2;
    while (i < lines.length && !endsTable(lines[i], inItem)) {
      tbody.appendChild(tableRow(tableCells(lines[i]), found.aligns, "td"));
      i += 1;
    }
    if (tbody.firstChild) tableEl.appendChild(tbody);
    wrap.appendChild(tableEl);
    return { node: wrap, next: i };
  }

  function render(text) {
    var frag = blocks(text);
    frag.querySelectorAll(AUTO_DIR).forEach(function (node) { node.dir = "auto"; });
    return frag;
  }

  /* The blocks of `text`, directions not set yet. */
  function blocks(text) {
    var frag = document.createDocumentFragment();
    var lines = String(text == null ? "" : text).replace(/\r\n?/g, "\n").split("\n");
    var para = [];
    function endPara() {
      if (para.length) { frag.appendChild(paragraph(para)); para = []; }
    }
    var i = 0, m;
    while (i < lines.length) {
      var line = lines[i];
      if ((m = RE_FENCE.exec(line))) {
        endPara();
        var code = fenced(lines, i, m);
        if (code.node) frag.appendChild(code.node);
        i = code.next; continue;
      }
      if (/^\s*$/.test(line)) { endPara(); i += 1; continue; }
      if ((m = RE_HEADING.exec(line))) {
        endPara();
        var h = el("h" + m[1].length);
        // A reply sits under its author's h2 (the chat's title is the h1): its own "#"
        // headings are told to screen readers as levels 3-6, so they stay inside the
        // message. The element, and so its look, is the one the markdown asked for.
        h.setAttribute("aria-level", String(Math.min(m[1].length + 2, 6)));
        renderInline(m[2], h, false);
        frag.appendChild(h);
        i += 1; continue;
      }
      if (RE_HR.test(line)) { endPara(); frag.appendChild(el("hr")); i += 1; continue; }
      if (RE_ITEM.test(line)) {
        endPara();
        var res = list(lines, i);
        frag.appendChild(res.node);
        i = res.next; continue;
      }
      if (RE_QUOTE.test(line)) {
        endPara();
        var quoted = [];
        while (i < lines.length && (m = RE_QUOTE.exec(lines[i]))) { quoted.push(m[1]); i += 1; }
        var bq = el("blockquote");
        bq.appendChild(blocks(quoted.join("\n")));
        frag.appendChild(bq);
        continue;
      }
      var found = tableStart(lines, i);
      if (found) {
        endPara(); // the lines before the header row stay their own paragraph
        var tab = table(lines, i, found);
        frag.appendChild(tab.node);
        i = tab.next; continue;
      }
      para.push(line);
      i += 1;
    }
    endPara();
    return frag;
  }

  window.ChatMarkdown = { render: render, safeUrl: safeUrl, copyText: copyText, showCopied: showCopied, announce: announce };
})();
