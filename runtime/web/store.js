/* chatfile page: conversations and settings kept in localStorage.
 *
 * Everything read back (from storage or from an imported file) is treated as plain
 * data: strings are coerced with String(), unknown fields are dropped, so a crafted
 * file can't smuggle anything but text into the page.
 *
 * Exposes window.ChatStore.
 */
(function () {
  "use strict";

  var KEY_CONVS = "chatfile.conversations";
  var KEY_CURRENT = "chatfile.current";
  var KEY_SETTINGS = "chatfile.settings";
  var KEY_API = "chatfile.apiKey";
  var KEY_DELETED = "chatfile.deleted";
  // How many deleted chats' ids are kept (the last ones deleted; no time limit). A
  // tombstone is needed only while some tab still holds the chat without having heard
  // of its deletion: a tab hears of it within milliseconds (the storage event), and at
  // the latest at its own next save or read, which take the tombstones first. 500 more
  // deletions before then would be needed to lose one; 500 ids are about 8 KB.
  var DELETED_KEPT = 500;
  var ROLES = { system: true, user: true, assistant: true };
  // Why a reply ended early: at the max-tokens setting, or at the end of the context.
  var CUTS = { length: true, context: true };
  var TITLE_MAX_CHARS = 80;
  // A stored chat's marks beside its messages (see cleanConversation).
  var SAVED_MARKS = ["writingAt", "writingLocked"];

  function readJson(key, fallback) {
    try {
      var raw = localStorage.getItem(key);
      return raw == null ? fallback : JSON.parse(raw);
    } catch (e) {
      return fallback;
    }
  }

  function writeJson(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
      return true;
    } catch (e) {
      // Quota exceeded or storage disabled: the chat still works, it just won't persist.
      return false;
    }
  }

  function newId() {
    return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
  }

  /* Any JSON value as text. String(obj) is not safe here: an object whose "toString"
   * is not a function makes String() throw. */
  function asText(v) {
    if (typeof v === "string") return v;
    if (v == null) return "";
    if (typeof v === "number" || typeof v === "boolean") return String(v);
    try { return JSON.stringify(v) || ""; } catch (e) { return ""; }
  }

  function cleanMessage(m) {
    if (!m || typeof m !== "object") return null;
    var role = typeof m.role === "string" ? m.role : "";
    if (!Object.prototype.hasOwnProperty.call(ROLES, role)) return null;
    var content = m.content;
    // OpenAI-style content parts: keep only their text.
    if (Array.isArray(content)) {
      content = content.map(function (part) {
        return part && typeof part === "object" && part.text != null ? asText(part.text) : "";
      }).join("");
    }
    var out = { role: role, content: asText(content) };
    if (m.stopped === true) out.stopped = true;
    // (a reply's mark: under a question it would say the question was cut)
    if (role === "assistant" && typeof m.cut === "string" &&
        Object.prototype.hasOwnProperty.call(CUTS, m.cut)) out.cut = m.cut;
    // A thinking model's reasoning (shown above the reply; sent back as reasoning_content),
    // as text, as the content is.
    var reasoning = role === "assistant" ? asText(m.reasoning) : "";
    if (reasoning) out.reasoning = reasoning;
    if (m.leftOut === true) out.leftOut = true; // (not sent with the last reply: see app.js)
    return out;
  }

  /* A date (ms since 1970) read back: a finite positive number, else `fallback`. Number()
   * of an object whose valueOf and toString are not functions throws (the whole import
   * failed with "Cannot convert object to primitive value"), and 1e400 is Infinity (the
   * chat stayed first in the list whatever was newer). */
  function asTime(v, fallback) {
    var n = typeof v === "number" ? v : typeof v === "string" ? Number(v) : NaN;
    return isFinite(n) && n > 0 ? n : fallback;
  }

  /* s cut to at most n characters (UTF-16 units) without cutting a character in two: an
   * emoji is two units (a title cut between them ended in "\ufffd"), a family or a flag
   * several characters joined (a cut left a part of it). */
  function cutText(s, n) {
    if (s.length <= n) return s;
    var out = "";
    if (typeof Intl === "object" && Intl.Segmenter) {
      var it = new Intl.Segmenter("en", { granularity: "grapheme" }).segment(s)[Symbol.iterator]();
      for (var g = it.next(); !g.done && out.length + g.value.segment.length <= n; g = it.next()) out += g.value.segment;
    }
    if (out) return out;
    // (no Intl.Segmenter, or one character longer than n: at least no half of an emoji)
    out = s.slice(0, n);
    return /[\ud800-\udbff]$/.test(out) ? out.slice(0, -1) : out;
  }

  function cleanTitle(t) {
    var s = asText(t).replace(/\s+/g, " ").trim();
    return cutText(s, TITLE_MAX_CHARS) || "New chat";
  }

  function cleanConversation(c) {
    if (!c || typeof c !== "object" || !Array.isArray(c.messages)) return null;
    var now = Date.now();
    var out = {
      id: typeof c.id === "string" && /^[a-z0-9]{1,40}$/.test(c.id) ? c.id : newId(),
      title: cleanTitle(c.title),
      created: asTime(c.created, now),
      updated: asTime(c.updated, now),
      messages: c.messages.map(cleanMessage).filter(Boolean),
    };
    // A tab writing a reply in this chat renews this mark (ms since 1970) at every save;
    // the other tabs show the reply as being written there (see app.js, writtenElsewhere).
    var writingAt = asTime(c.writingAt, 0);
    if (writingAt) out.writingAt = writingAt;
    // (the writing tab holds a lock while it writes, which tells where locks are seen)
    if (writingAt && c.writingLocked === true) out.writingLocked = true;
    // How many times the chat was saved changed (see saveConversations): a stored copy
    // with a lower count than a tab's own is an older one, written over it.
    var rev = asTime(c.rev, 0);
    if (rev) out.rev = rev;
    return out;
  }

  /* The chats stored, without those deleted (loadDeleted). A save of another tab whose
   * copy of the storage was behind a deletion (see saveConversations) may have written a
   * deleted chat back: every reader leaves it out, and the next save drops it. */
  function loadConversations() {
    var dead = {};
    loadDeleted().forEach(function (id) { dead[id] = true; });
    return storedConversations().filter(function (c) { return !dead[c.id]; });
  }

  /* The chats stored, deleted or not. */
  function storedConversations() {
    var list = readJson(KEY_CONVS, []);
    if (!Array.isArray(list)) return [];
    return list.map(cleanConversation).filter(Boolean);
  }

  /* The ids of `ids` (an object: id -> true) whose chats are stored all the same. */
  function storedAgain(ids) {
    return storedConversations().filter(function (c) { return ids[c.id]; }).map(function (c) { return c.id; });
  }

  /* The ids of the chats deleted in any tab of this browser (the newest last): a tab
   * still holding one (writing a reply in it) must not save it back. */
  function loadDeleted() {
    var ids = readJson(KEY_DELETED, []);
    return Array.isArray(ids) ? ids.filter(function (id) { return typeof id === "string"; }) : [];
  }

  /* Saves this tab's chats merged with what is stored, chat by chat. A chat whose
   * messages this tab changed since it last read or saved it (`changed(c)` is "all"), or
   * that is not stored yet, is saved as this tab has it (with the stored title when that
   * is newer: a rename made elsewhere); one it only renamed ("title") with the stored
   * messages and its title; any other as stored: another tab may have saved a newer one
   * whose `storage` event this tab has not had yet (writing this tab's copy lost that
   * tab's final reply). A chat another tab added stays (after this tab's own). A chat
   * deleted, here (`forgotten`) or in another tab (loadDeleted), goes, also from this tab.
   * -> {ok, list, written, gone}: this tab's list as it now is (its own objects and the
   * chats other tabs added), the ids of the chats whose change was saved, and those of
   * its chats another tab deleted.
   * This is not atomic across tabs: in Chromium each tab's process reads a copy of the
   * storage that another tab's write reaches a moment later, so two tabs saving at one
   * instant each write the other's chat as they last knew it, and the later write wins
   * (a Web Lock around the save does not help: the copy may still be behind when the
   * lock is granted). Each chat saved changed counts up its `rev`, so that the tab whose
   * change was written over sees it (a stored `rev` below its own) and saves it again
   * (see app.js, onOtherTabSaved). */
  function saveConversations(list, forgotten, changed) {
    var deleted = loadDeleted(), dead = {};
    deleted.forEach(function (id) { dead[id] = true; });
    var fresh = Object.keys(forgotten || {}).filter(function (id) { return !dead[id]; });
    if (fresh.length) {
      deleted = deleted.concat(fresh).slice(-DELETED_KEPT);
      fresh.forEach(function (id) { dead[id] = true; });
      writeJson(KEY_DELETED, deleted); // (before the chats: a tab told of them finds it)
    }
    var stored = {}, mine = {};
    loadConversations().forEach(function (c) { stored[c.id] = c; });
    var shown = [], out = [], written = [], gone = [];
    list.forEach(function (c) {
      mine[c.id] = true;
      if (dead[c.id]) { gone.push(c.id); return; }
      var there = stored[c.id], what = there ? changed(c) : "all";
      shown.push(c);
      if (!what) { out.push(there); return; }
      if (there && there.updated > c.updated) {
        c.title = there.title;
        c.updated = there.updated;
      }
      // (a stored copy saved more times than this tab's: another tab's save, not heard of yet)
      var newerThere = !!there && (there.rev || 0) > (c.rev || 0);
      c.rev = Math.max(there && there.rev || 0, c.rev || 0) + 1;
      if (what === "title") {
        there.title = c.title;
        there.updated = c.updated;
        there.rev = c.rev;
        // This tab's copy is then what it saved: with the count of this save, its older
        // messages would be taken for the newer ones, and saved over the stored, when an
        // older copy comes next. (A stored copy counted below this tab's is an older one
        // written over its save: this tab's messages stay, to be saved again when it
        // hears of it, see app.js, writtenOver.)
        if (newerThere) {
          c.messages = there.messages;
          SAVED_MARKS.forEach(function (k) { if (k in there) c[k] = there[k]; else delete c[k]; });
        }
      }
      out.push(what === "title" ? there : c);
      written.push(c.id);
    });
    Object.keys(stored).forEach(function (id) {
      if (mine[id] || dead[id]) return;
      shown.push(stored[id]);
      out.push(stored[id]);
    });
    return { ok: writeJson(KEY_CONVS, out), list: shown, written: written, gone: gone };
  }

  /* A conversation read from a file: a new id (never overwrite an existing chat), and
   * none of the page's own marks (what its last request left out, a reply being written),
   * which are never a file's. */
  function imported(conv) {
    conv.id = newId();
    delete conv.writingAt; // (no tab of this browser is writing in a chat read from a file)
    delete conv.writingLocked;
    delete conv.rev; // (a count of saves in another browser)
    conv.messages.forEach(function (m) { delete m.leftOut; });
    return conv;
  }

  /* Parses an exported (or hand-made) JSON file: one conversation ({title, messages}, or
   * a bare array of messages, as the JSON button saves) or all of them ({conversations:
   * [...]}, as Export all saves). -> {convs, skipped, all}: the chats read, how many
   * entries of an Export all file were not chats, and whether it was one. Throws Error with a readable message
   * when the file holds none, so that a bad file changes nothing. */
  function parseImport(text) {
    var data;
    try {
      data = JSON.parse(text);
    } catch (e) {
      // (a Markdown export, most likely: it is for reading, and can't be read back)
      throw new Error("That file is not valid JSON. Import reads what the JSON button (one chat) or Export all saves, not Markdown (MD) exports.");
    }
    if (data && typeof data === "object" && Array.isArray(data.conversations)) {
      var convs = data.conversations.map(cleanConversation).filter(Boolean).map(imported);
      if (!convs.length) throw new Error("That file's \"conversations\" list holds no chat, so there is nothing to import.");
      return { convs: convs, skipped: data.conversations.length - convs.length, all: true };
    }
    if (Array.isArray(data)) data = { title: "Imported chat", messages: data };
    var conv = cleanConversation(data);
    if (!conv) throw new Error("That file has neither a \"messages\" nor a \"conversations\" list, so it isn't a chatfile export.");
    conv.updated = Date.now(); // (one chat imported comes first in the list)
    return { convs: [imported(conv)], skipped: 0, all: false };
  }

  /* A message as exports write it: its text, and why it ended early when it did (so
   * that an imported reply can still be continued). */
  function exportMessage(m) {
    var out = { role: m.role, content: m.content };
    if (m.reasoning) out.reasoning = m.reasoning;
    if (m.stopped) out.stopped = true;
    if (m.cut) out.cut = m.cut;
    return out;
  }

  function exportJson(conv) {
    return JSON.stringify({
      format: "chatfile-conversation",
      version: 1,
      title: conv.title,
      created: conv.created,
      messages: conv.messages.map(exportMessage),
    }, null, 2);
  }

  /* Every chat, in one file that Import reads back (each with its dates, so the list
   * keeps its order). */
  function exportAll(convs) {
    return JSON.stringify({
      format: "chatfile-conversations",
      version: 1,
      exported: Date.now(),
      conversations: convs.map(function (c) {
        return { title: c.title, created: c.created, updated: c.updated, messages: c.messages.map(exportMessage) };
      }),
    }, null, 2);
  }

  var ROLE_NAMES = { system: "System", user: "User", assistant: "Assistant" };

  // An opening fence as markdown.js reads it: its indent, its fence, its language.
  var RE_FENCE = /^([ \t]*)(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;

  /* text with a code block it leaves open closed at its end, with the opening fence's
   * indent (a fence at the margin would end a list item and open another block). A reply
   * cut or stopped inside one made every message after it code in the Markdown export. */
  function closeOpenFence(text) {
    var open = null;
    text.split("\n").forEach(function (line) {
      if (!open) { open = RE_FENCE.exec(line); return; }
      var close = new RegExp("^[ \\t]*" + open[2][0] + "{" + open[2].length + ",}\\s*$");
      if (close.test(line)) open = null;
    });
    return open ? text.replace(/\n?$/, "\n") + open[1] + open[2] : text;
  }

  function exportMarkdown(conv) {
    var parts = ["# " + conv.title, ""];
    conv.messages.forEach(function (m) {
      // (a question with an open fence too: it is Markdown here, whoever wrote it)
      parts.push("**" + ROLE_NAMES[m.role] + ":**", "");
      // The reasoning as a quote above the reply, which it is not part of.
      if (m.reasoning) {
        parts.push("> *Thinking:*", ">", closeOpenFence(m.reasoning).split("\n").map(function (line) {
          return line ? "> " + line : ">";
        }).join("\n"), "");
      }
      parts.push(closeOpenFence(m.content), "");
    });
    return parts.join("\n");
  }

  function loadSettings() {
    var s = readJson(KEY_SETTINGS, null);
    return s && typeof s === "object" ? s : {};
  }

  window.ChatStore = {
    KEY_CONVS: KEY_CONVS,
    KEY_SETTINGS: KEY_SETTINGS,
    newId: newId,
    loadConversations: loadConversations,
    saveConversations: saveConversations,
    loadDeleted: loadDeleted,
    storedAgain: storedAgain,
    loadCurrentId: function () { return readJson(KEY_CURRENT, null); },
    saveCurrentId: function (id) { writeJson(KEY_CURRENT, id); },
    loadSettings: loadSettings,
    saveSettings: function (s) { return writeJson(KEY_SETTINGS, s); },
    loadApiKey: function () { try { return localStorage.getItem(KEY_API) || ""; } catch (e) { return ""; } },
    saveApiKey: function (k) { try { localStorage.setItem(KEY_API, k); } catch (e) { /* not persisted */ } },
    parseImport: parseImport,
    exportJson: exportJson,
    exportAll: exportAll,
    exportMarkdown: exportMarkdown,
    cleanTitle: cleanTitle,
    cutText: cutText,
  };
})();
