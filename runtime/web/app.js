/* chatfile page: the chat UI. Depends on markdown.js, store.js and api.js.
 *
 * All text from the model, the user or an imported file reaches the DOM through
 * textContent or ChatMarkdown.render (which only creates Text nodes for text).
 */
(function () {
  "use strict";

  var Md = window.ChatMarkdown, Store = window.ChatStore, Api = window.ChatApi;

  // The chat template adds role markers around every message; llama.cpp's templates
  // use 3 to 8 tokens per message, so we reserve a little more than that.
  var PER_MESSAGE_OVERHEAD_TOK = 8;
  var PROMPT_OVERHEAD_TOK = 8; // BOS plus the assistant header of the generation prompt
  var HEALTH_POLL_MS = 400;
  // Watching the server once the chat is open (see watchServer): a check now and then
  // while it answers, and while it does not, checks that back off from 1 s to 10 s. A
  // hidden tab makes none; it checks at once when it is shown again.
  var ALIVE_POLL_MS = 5000;
  var GONE_POLL_FIRST_MS = 1000;
  var GONE_POLL_MAX_MS = 10000;
  var RELOAD_POLL_MS = 1000; // a server started again that is still loading its model
  var TITLE_FROM_MESSAGE_CHARS = 40;
  // Reloading the page while the server is down only shows the browser's error page;
  // once it runs again, Retry (or a new message) works in the page as it is.
  var MSG_SERVER_GONE = "The chatfile server is not running. Start it again (for example `chatfile run`), then press Retry or send your message again.";
  var MSG_SERVER_GONE_MIDWAY = "The chatfile server stopped in the middle of this reply. Start it again (for example `chatfile run`), then press Regenerate or send a new message.";
  // A Continue cut off: Regenerate would throw away the reply it was going on with.
  var MSG_SERVER_GONE_CONTINUING = "The chatfile server stopped before this reply was finished. Start it again (for example `chatfile run`), then press Continue or send a new message.";
  var MSG_SERVER_GONE_AT_START = "The chatfile server is not running. Start it again (for example `chatfile run`): this page connects by itself once it runs.";
  var MSG_SERVER_DOWN = "The chatfile server is not running. Start it again (for example `chatfile run`): this page reconnects by itself, and keeps your chats and what you are typing.";
  var MSG_SERVER_BACK = "chatfile is running again.";
  // How the four messages above say to start it again: a double-clicked bundle's user
  // never typed `chatfile run`, and is told to open that file again instead (see
  // nameHowToStartAgain, which sets this from the file /props names).
  var startAgainHow = "(for example `chatfile run`)";
  var MSG_NOT_SAVED = "This browser could not save the chats (its storage is full or turned off): new messages are not being kept.";
  var MSG_CONTEXT_FULL = "The conversation no longer fits in the model's context. Start a new chat, or edit your message to make it shorter.";
  // A Continue for which fitContext finds no room: the reply and its question alone fill
  // the context. (It said MSG_CONTEXT_FULL, "edit your message", and Continue stayed, to
  // fail the same way at every press.)
  var MSG_NO_ROOM_TO_CONTINUE = "This reply cannot go on: with it, the chat fills the model's context. Send another message to go on (the oldest messages will be left out), or start a new chat.";
  var MSG_EDIT_WAITS = "A reply is being written in this chat: send your edit once it is finished (it stays in the edit box).";
  var MSG_ELSEWHERE_SEND = "The reply in this chat is being written in another tab: send your message once it is finished (it stays in the box), or in another chat.";
  var MSG_DROPPED = "Older messages were left out to fit the context: the model no longer sees the greyed-out ones above the line (a new chat starts afresh).";
  var SAVE_EVERY_MS = 2000; // how often a reply is saved while it is written (see beat)
  // A chat whose reply another tab writes carries that tab's mark, renewed at each of its
  // saves (every SAVE_EVERY_MS, also while the reply waits for its first word). A mark
  // older than this: the tab went without a word (crashed, frozen, its browser killed),
  // and the reply is shown stopped, with Continue. (A tab that closes says so itself.)
  // Where the browser has locks, they tell instead (see WRITING_LOCK).
  var WRITER_GONE_MS = 8000;
  // Where the browser has navigator.locks (shared by the tabs of this origin), the tab
  // that writes a reply in chat c also holds the lock WRITING_LOCK + c.id until it ends.
  // A mark needs its tab's timers to stay fresh, and a hidden tab's are throttled to one
  // a minute, or frozen, while its reply goes on; a lock stays held without them, and
  // the browser lets it go when the tab closes or crashes. A page over plain http from
  // another machine is not a secure context and has no navigator.locks: marks alone.
  var WRITING_LOCK = "chatfile-writing:";
  var locks = navigator.locks || null;
  // No first word after this long: the page asks the server (/slots) whether it is
  // answering someone else meanwhile (another tab, another program), and says so.
  var QUEUE_CHECK_MS = 1500;
  var QUEUE_POLL_MS = 2000;  // and asks again, until the first word
  // The largest request the server takes (runtime/server.py's max_body_bytes; a /props
  // that says max_body_bytes is taken at its word). A message the requests that carry it
  // (/tokenize, /apply-template, the reply's) would not hold is refused before it is
  // added, and stays in the box: the server's 413 said "edit your message" with the
  // message gone from the box into the chat.
  var MAX_BODY_BYTES = 1 << 20;
  var REQUEST_ROOM_BYTES = 4096; // a request beside its messages: the settings, the JSON
  var MIN_REPLY_TOK = 64;    // room left for a reply to a message bigger than the reserve allows
  // The reply's reserve is at most this share of the context. Half (as it was) left a
  // 1024-token chat room for one long answer: the very next question was sent without
  // it, and the model asked what "that class" was. The server still stops a reply that
  // runs into the end of the context (finish reason "length"), and the page says so.
  var RESERVE_CTX_SHARE = 4;
  var FOLLOW_PX = 120;       // this close to the bottom, the view follows a reply as it grows
  var EXAMPLES = [
    "Explain what a GGUF file is in two sentences.",
    "Write a haiku about running a model on a laptop.",
    "Give me three ideas for a weekend project in Python.",
    "What is the difference between temperature and top-p?",
  ];

  var state = {
    props: null,
    nCtx: 0,
    defaults: { systemPrompt: "", temperature: 0.8, topP: 0.95, maxTokens: 512, seed: "" },
    settings: {},
    convs: [],
    forgotten: {}, // ids of chats deleted (here or in another tab): a save must not bring them back
    // Chat id -> the chat as text (see chatText) when this tab last read it from storage
    // or saved it: a chat whose text is another now was changed here (see changedHere).
    synced: {},
    currentId: null,
    tokenCache: new Map(), // message text -> token count (from /tokenize)
    modelKey: null, // which model (and template, context) the token counts are for
    usage: null, // {id, n, tok}: usage.total_tokens of the last reply in chat `id` (n messages)
    // Chat id -> the reply being written in it (see generate). A reply goes on in its own
    // chat while another chat is shown, and a chat can be answered while another one is:
    // the server answers one request at a time and keeps the others waiting in its queue.
    runs: {},
    // Chat id -> true for the chats whose writing lock another tab holds (see
    // lookAtWritingLocks). null until the browser first says, or without locks: the
    // marks tell meanwhile.
    heldElsewhere: null,
  };

  // What the page knows of the server since the chat opened (see watchServer).
  var link = {
    down: false,      // it stopped answering, and has not answered since
    loading: false,   // it answers, but is (re)loading its model
    failed: false,    // it answers that its model failed to load
    instance: null,   // /health's "instance": which model with which options
    timer: null,      // the next check, when one is planned
    checking: false,  // a check is under way
    goneDelayMs: GONE_POLL_FIRST_MS, // the wait before the next check while it is down
    propsDelayMs: 0,  // it answers, but its /props failed: the wait before trying again
    outageError: "",  // meanwhile: what the error line said of the outage (see serverBack)
    stopped: false,   // Quit: the page stops it on purpose, no checks meanwhile
    quit: "",         // after this tab's Quit: "stopping" until a check finds it gone, "gone"
  };

  function $(id) { return document.getElementById(id); }

  /* ---------- small helpers ---------- */

  function show(elm, on) { elm.hidden = !on; }

  /* Says `text` to screen readers by #announce (see Md.announce and placeAnnounce). What
   * is said in one go (a reply that starts and waits, one that ends with a notice) is
   * said as one: a live region given two texts at once says only the last. */
  var toSay = [];
  function say(text) {
    if (!toSay.length) queueMicrotask(function () { Md.announce(toSay.join(" ")); toSay = []; });
    toSay.push(text);
  }

  /* While a dialog is open the page behind it is inert, and the notice's and the error's
   * live regions with it: #announce, in the dialog meanwhile, says them instead. */
  function sayIfInDialog(text) {
    if (text && document.querySelector("dialog[open]")) say(text);
  }

  /* The notice line: what the page last said about the chat, followed by the warning
   * that saving fails while it does (the one must not hide the other). */
  var noticeText = "", saveWarning = "";
  function setNotice(text) {
    noticeText = text || "";
    var all = [noticeText, saveWarning].filter(Boolean).join(" ");
    // (only when it changes: a screen reader says again what is written again, and a
    // reply's saves, every 2 s, wrote it again)
    if ($("notice").textContent !== all) { $("notice").textContent = all; sayIfInDialog(all); }
    show($("notice"), !!all);
  }

  /* kind "gone": the error says the server is not running; "failed": that its model
   * failed to load. Either goes once the server answers again (see serverBack). */
  var errorKind = "";
  function setError(text, kind) {
    errorKind = text ? kind || "" : "";
    // (as the notice: said once, not at each chat opened while the server is down)
    if ($("error").textContent !== (text || "")) { $("error").textContent = text || ""; sayIfInDialog(text); }
    show($("error"), !!text);
  }

  /* Another chat is shown: what was said about the last one goes, but not that the
   * server is down, which is true of every chat. */
  function clearChatMessages() {
    setNotice("");
    if (link.down) setError(MSG_SERVER_DOWN, "gone");
    else if (!link.failed) setError(""); // (the model that failed to load still has)
    $("tps").textContent = "";
  }

  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  function button(label, testid, aria, onClick) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    if (testid) b.setAttribute("data-testid", testid);
    if (aria) b.setAttribute("aria-label", aria);
    b.addEventListener("click", onClick);
    return b;
  }

  function download(filename, text, mime) {
    var blob = new Blob([text], { type: mime });
    var url = URL.createObjectURL(blob);
    var a = document.createElement("a");
    a.href = url;
    a.download = filename;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
  }

  function fileStem(title) {
    // Letters and digits of any script: a Japanese or Arabic title names its file too.
    return (title.replace(/[^\p{L}\p{N} _-]+/gu, "").trim().replace(/\s+/g, "-").slice(0, 50) || "chat").toLowerCase();
  }

  /* ---------- dialogs ---------- */

  /* A modal dialog makes the rest of the page inert, #announce with it: a reply that
   * ended, or an error, would go unsaid. So #announce is in the open dialog meanwhile
   * (emptied as it moves: what it said before is not said again), and back after. */
  function placeAnnounce() {
    var open = document.querySelectorAll("dialog[open]"), live = $("announce");
    var home = open.length ? open[open.length - 1] : document.body;
    if (live.parentNode === home) return;
    live.textContent = "";
    home.appendChild(live);
  }

  /* A small modal: asks for text (or, with confirmOnly, just OK/Cancel).
   * Resolves to the string, true, or null when cancelled. */
  function ask(message, opts) {
    opts = opts || {};
    var dlg = $("ask-dialog"), input = $("ask-input");
    $("ask-message").textContent = message;
    input.type = opts.password ? "password" : "text";
    input.value = opts.value || "";
    show(input, !opts.confirmOnly);
    $("ask-ok").textContent = opts.okLabel || "OK";
    // Delete and Quit are confirmed with a red button, not the blue of an everyday OK.
    $("ask-ok").classList.toggle("danger", opts.danger === true);
    return new Promise(function (resolve) {
      function finish(result) {
        $("ask-ok").removeEventListener("click", onOk);
        $("ask-cancel").removeEventListener("click", onCancel);
        input.removeEventListener("keydown", onKey);
        dlg.removeEventListener("cancel", onCancel);
        if (dlg.open) dlg.close();
        resolve(result);
      }
      function onOk() { finish(opts.confirmOnly ? true : input.value); }
      function onCancel(e) { if (e) e.preventDefault(); finish(null); }
      // (not the Enter that ends an IME composition: that one picks the characters)
      function onKey(e) { if (e.key === "Enter" && !e.isComposing) { e.preventDefault(); onOk(); } }
      $("ask-ok").addEventListener("click", onOk);
      $("ask-cancel").addEventListener("click", onCancel);
      input.addEventListener("keydown", onKey);
      dlg.addEventListener("cancel", onCancel);
      dlg.showModal();
      placeAnnounce();
      if (opts.confirmOnly) $("ask-ok").focus(); else { input.focus(); input.select(); }
    });
  }

  /* Runs fn(); on a 401 asks once for the API key, stores it and tries again. */
  async function withAuth(fn) {
    for (var attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (e) {
        if (!(e instanceof Api.ApiError) || e.status !== 401 || attempt >= 2) throw e;
        var key = await ask(attempt === 0
          ? "This chatfile server needs an API key. Enter it to continue (it is kept in this browser only)."
          : "That key was not accepted. Enter the API key again:", { password: true, okLabel: "Use key" });
        if (!key) throw e;
        Api.setApiKey(key.trim());
        Store.saveApiKey(key.trim());
      }
    }
  }

  /* ---------- settings ---------- */

  function effectiveSettings() {
    var s = {}, d = state.defaults, saved = state.settings;
    Object.keys(d).forEach(function (k) { s[k] = saved[k] !== undefined ? saved[k] : d[k]; });
    return s;
  }

  function openSettings() {
    var s = effectiveSettings();
    $("set-system").value = s.systemPrompt;
    $("set-temperature").value = s.temperature;
    $("set-top-p").value = s.topP;
    $("set-max-tokens").value = s.maxTokens;
    $("set-seed").value = s.seed;
    show($("settings-error"), false);
    markInvalid(null);
    closeSidebar();
    $("settings-dialog").showModal();
    placeAnnounce();
  }

  /* The settings field `id` is marked as wrong, described by the error (null: none). */
  var NUMBER_FIELDS = ["set-temperature", "set-top-p", "set-max-tokens", "set-seed"];
  function markInvalid(id) {
    NUMBER_FIELDS.forEach(function (f) {
      if (f === id) {
        $(f).setAttribute("aria-invalid", "true");
        $(f).setAttribute("aria-describedby", "settings-error");
      } else {
        $(f).removeAttribute("aria-invalid");
        $(f).removeAttribute("aria-describedby");
      }
    });
  }

  function fieldError(id, text) {
    var e = new Error(text);
    e.field = id;
    return e;
  }

  function readSettingsForm() {
    function num(id, lo, hi, integer) {
      var raw = $(id).value.trim();
      var v = Number(raw);
      if (raw === "" || !isFinite(v) || v < lo || v > hi || (integer && Math.floor(v) !== v)) {
        throw fieldError(id, $(id).parentNode.firstChild.textContent.trim() + " must be " +
          (integer ? "a whole number" : "a number") + " from " + lo + " to " + hi + ".");
      }
      return v;
    }
    var seedRaw = $("set-seed").value.trim();
    var seed = "";
    if (seedRaw !== "") {
      seed = Number(seedRaw);
      // (whole numbers JavaScript holds exactly; the server takes these)
      if (!Number.isSafeInteger(seed) || seed < 0) throw fieldError("set-seed", "Seed must be a whole number from 0 to " + Number.MAX_SAFE_INTEGER + ", or blank for random.");
    }
    return {
      systemPrompt: $("set-system").value,
      temperature: num("set-temperature", 0, 2, false), // the OpenAI API's range
      topP: num("set-top-p", 0, 1, false),
      maxTokens: num("set-max-tokens", 1, 1000000, true),
      seed: seed,
    };
  }

  function saveSettingsFromForm() {
    try {
      state.settings = readSettingsForm();
    } catch (e) {
      $("settings-error").textContent = e.message;
      show($("settings-error"), true);
      // The focus goes to the field to mend (it was on Save), which says what is wrong.
      markInvalid(e.field);
      $(e.field).focus();
      return;
    }
    Store.saveSettings(state.settings);
    $("settings-dialog").close();
    updateContextUse();
  }

  /* ---------- conversations ---------- */

  function current() {
    for (var i = 0; i < state.convs.length; i++) if (state.convs[i].id === state.currentId) return state.convs[i];
    return null;
  }

  /* The reply being written in chat c, or null. */
  function runOf(c) {
    return c && Object.prototype.hasOwnProperty.call(state.runs, c.id) ? state.runs[c.id] : null;
  }

  function allRuns() {
    return Object.keys(state.runs).map(function (id) { return state.runs[id]; });
  }

  /* Whether another tab is writing a reply in chat c: it holds c's writing lock (see
   * WRITING_LOCK), or, until the browser has said which locks are held or without locks,
   * its mark is recent (see WRITER_GONE_MS). Its last message is then that reply so far,
   * or the question it answers; this tab must not write it again (Continue, Regenerate)
   * nor cut the chat under it (Edit, Send), and picks the whole reply up when that tab
   * saves it. */
  function writtenElsewhere(c) {
    if (!c || runOf(c)) return false;
    if (state.heldElsewhere && state.heldElsewhere[c.id]) return true;
    if (lastSaveDue[c.id] && typeof c.writingAt === "number") return true; // (see awaitLastSave)
    return markedElsewhere(c);
  }

  /* Whether chat c carries a recent mark that the locks do not speak for: that of a tab
   * without locks (a page loaded before they came, or where they are missing), which
   * holds no lock while it writes. The mark of a tab with locks says so (writingLocked):
   * where this tab sees the locks, that tab's lock tells, not its mark (see WRITING_LOCK). */
  function markedElsewhere(c) {
    if (typeof c.writingAt !== "number") return false;
    if (state.heldElsewhere && c.writingLocked) return false;
    var ageMs = Date.now() - c.writingAt;
    return ageMs < WRITER_GONE_MS && ageMs > -WRITER_GONE_MS; // (a mark from the future: a clock set back)
  }

  /* How much a reply holds: its answer and its reasoning (a Continue may add to either). */
  function replyChars(m) {
    return m.content.length + (m.reasoning || "").length;
  }

  /* fn(), with the replies being written as they would be if the tab closed now: marked
   * as stopped, one without a word yet left out, and a Continue without a word yet as
   * its reply was (a reply cut at max tokens was saved as stopped while its Continue
   * waited for another chat's reply). For saves and exports. Unless `leaving` (the tab
   * closes: nobody writes them any more), their chats also carry this tab's mark, which
   * tells the other tabs that the reply is being written here (see writtenElsewhere). */
  function asIfStopped(fn, leaving) {
    var undo = [];
    allRuns().forEach(function (run) {
      var m = run.msg, msgs = run.conv.messages, c = run.conv;
      if (!leaving) {
        c.writingAt = Date.now();
        if (locks) c.writingLocked = true; // (its lock tells: see markedElsewhere)
        undo.push(function () { delete c.writingAt; delete c.writingLocked; });
      }
      if (!m) return;
      if (run.was && replyChars(m) === run.wasChars) {
        if (run.was.stopped) m.stopped = true;
        if (run.was.cut) m.cut = run.was.cut;
        undo.push(function () { delete m.stopped; delete m.cut; });
      } else if (!m.content && !m.reasoning && msgs[msgs.length - 1] === m) {
        msgs.pop();
        undo.push(function () { msgs.push(m); });
      } else if (!m.stopped) {
        m.stopped = true;
        undo.push(function () { delete m.stopped; });
      }
    });
    try { return fn(); } finally { undo.forEach(function (f) { f(); }); }
  }

  /* Saves the chats (see save). Chats another tab deleted meanwhile go (see dropDeleted). */
  function persist() {
    var gone = asIfStopped(save);
    if (!gone.length) return;
    // (after asIfStopped: the replies are drawn as they are, not as saved)
    if (dropDeleted(gone)) renderAll(); else renderSidebar();
  }

  /* While this tab writes replies, they are saved every SAVE_EVERY_MS: what has arrived
   * survives a crash, and the mark that tells other tabs they are being written here is
   * renewed (also while a reply waits for its first word, when no piece comes to save).
   * performance.now(): the page's clock, which a test may stop. */
  var savedRunsAt = 0, beatTimer = null;
  function saveRunsIfDue() {
    var now = performance.now();
    if (now - savedRunsAt < SAVE_EVERY_MS) return;
    savedRunsAt = now;
    persist();
  }

  function beat() {
    if (!allRuns().length) { clearInterval(beatTimer); beatTimer = null; return; }
    saveRunsIfDue();
  }

  /* A reply starts: saved at once (its chat marked), then every SAVE_EVERY_MS. */
  function startBeat() {
    savedRunsAt = performance.now();
    persist();
    if (!beatTimer) beatTimer = setInterval(beat, SAVE_EVERY_MS / 2);
  }

  /* Chat c as text: its name (title, and the time it changed) and the rest (its
   * messages, the mark of a reply being written in it). */
  function chatText(c) {
    var body = Object.assign({}, c);
    delete body.title;
    delete body.updated;
    return { name: JSON.stringify([c.title, c.updated]), body: sameOrderJson(body) };
  }

  /* JSON of v with every object's keys in one order: a chat read from storage and this
   * tab's copy of it hold their keys in different orders (a mark or a count added here
   * goes last), and must still compare equal when they say the same. */
  function sameOrderJson(v) {
    return JSON.stringify(v, function (key, value) {
      if (!value || typeof value !== "object" || Array.isArray(value)) return value;
      var out = {};
      Object.keys(value).sort().forEach(function (k) { out[k] = value[k]; });
      return out;
    });
  }

  function sameText(x, y) { return x.name === y.name && x.body === y.body; }

  /* What this tab changed in chat c since it last read it from storage or saved it: ""
   * nothing, "title" only its name (a rename: the messages it holds may be older than
   * those stored, a reply another tab writes), "all" more. */
  function changedHere(c) {
    var now = chatText(c), was = state.synced[c.id];
    if (!was || now.body !== was.body) return "all";
    return now.name !== was.name ? "title" : "";
  }

  /* -> the chats of this tab that another tab deleted meanwhile (see dropDeleted). */
  function save() {
    // Saving merges with what is stored, chat by chat: only the chats this tab changed
    // are saved as it has them (another tab's newer save of the others stays), and chats
    // another tab made since this one last read them are kept (and shown here from now on).
    var before = state.convs;
    var saved = Store.saveConversations(before, state.forgotten, changedHere);
    state.convs = saved.list;
    if (saved.ok) {
      saved.written.forEach(function (id) {
        var c = state.convs.find(function (x) { return x.id === id; });
        state.synced[id] = chatText(c);
      });
    }
    saveWarning = saved.ok ? "" : MSG_NOT_SAVED;
    setNotice(noticeText);
    Store.saveCurrentId(state.currentId);
    return before.filter(function (c) { return saved.gone.indexOf(c.id) >= 0; });
  }

  /* Chats another tab deleted that this tab still had: the deletion wins (it is the last
   * word of the user, who was asked). A reply being written in one stops, as it does when
   * its chat is deleted here, and nothing more of it is saved; saved, it would bring the
   * chat back. The open chat gone, no chat is shown (as after New chat), not the first
   * other one: the message box keeps what was typed (and an open edit box's text goes
   * there, if it is empty), and Send would have sent it into an unrelated chat. Sent
   * now, it starts a new chat. The notice says why, and where the draft is.
   * -> whether the open chat went. */
  function dropDeleted(convs) {
    var named = [], writing = false, edits = keptEdits($("messages"), current());
    convs.forEach(function (c) {
      state.forgotten[c.id] = true;
      if (runOf(c)) writing = true;
      if (runOf(c) || c.id === state.currentId) named.push("\u201c" + c.title + "\u201d");
      stop(c);
    });
    state.convs = state.convs.filter(function (c) { return !state.forgotten[c.id]; });
    var moved = !state.convs.some(function (c) { return c.id === state.currentId; });
    if (moved) {
      state.currentId = null;
      clearChatMessages();
      var edited = edits.filter(function (e) { return e.text.trim(); })[0];
      if (edited && !$("input").value.trim()) { $("input").value = edited.text; draftChanged(); }
    }
    if (named.length) {
      setNotice(named.join(", ") + (named.length > 1 ? " were" : " was") + " deleted in another tab" +
        (writing ? ": the reply being written here was stopped." : ".") +
        (moved && $("input").value.trim() ? " What you typed is still in the box: Send starts a new chat with it." : ""));
    }
    return moved;
  }

  /* Keeps this tab's object for chat `mine` in `list` (the other tab's copy of it
   * replaced), but takes a rename made there: a later change than this tab's, which this
   * tab's next save would otherwise undo. */
  function keepMine(list, mine) {
    var i = list.findIndex(function (c) { return c.id === mine.id; });
    if (i >= 0 && list[i].updated > mine.updated) {
      mine.title = list[i].title;
      mine.updated = list[i].updated;
    }
    if (i >= 0) list[i] = mine; else list.unshift(mine);
  }

  /* Another tab saved its chats: show them here too. The chats this tab is answering in
   * stay this tab's objects (the replies stream into them); so does the open chat if the
   * other tab did not change it, so that an edit in progress is not redrawn away. */
  function onOtherTabSaved(e) {
    if (e.key === Store.KEY_SETTINGS) { state.settings = Store.loadSettings(); updateContextUse(); return; }
    if (e.key !== Store.KEY_CONVS) return;
    lookAtWritingLocks(); // (a reply that began there: its lock is held from now on)
    var stored = Store.loadConversations().filter(function (c) { return !state.forgotten[c.id]; });
    var list = stored.slice();
    // A chat this tab writes a reply in, or shows, deleted in another tab: not kept here.
    var dead = {};
    Store.loadDeleted().forEach(function (id) { dead[id] = true; });
    var lost = state.convs.filter(function (c) {
      return dead[c.id] && (runOf(c) || c.id === state.currentId);
    });
    var moved = lost.length > 0 && dropDeleted(lost);
    var byId = {};
    stored.forEach(function (c) { byId[c.id] = c; });
    // This tab's save written over by an older copy (another tab saved at the same
    // instant, see Store.saveConversations): this tab's copy stays, and is saved again.
    var behind = state.convs.filter(function (c) { return writtenOver(c, byId[c.id], dead); });
    behind.forEach(function (c) {
      keepMine(list, c);
      delete state.synced[c.id]; // (changed, for the save below: see changedHere)
    });
    var mine = current();
    var redraw = true;
    if (mine) {
      var i = list.findIndex(function (c) { return c.id === mine.id; });
      var same = i >= 0 && sameOrderJson(list[i].messages) === sameOrderJson(mine.messages);
      if (runOf(mine)) {
        keepMine(list, mine);
        redraw = false;
      } else if (same) {
        // The other tab's mark (a reply it writes here) is taken all the same: drawn
        // again only if it came or went (a Continue there, before its first word).
        var was = writtenElsewhere(mine);
        if (list[i].writingAt) mine.writingAt = list[i].writingAt; else delete mine.writingAt;
        if (list[i].writingLocked) mine.writingLocked = true; else delete mine.writingLocked;
        // (the same chat, as stored; also without a count, as a tab of the page from
        // before counts saves it: kept here, this tab's would be taken for newer than the
        // next save of another tab's, which counts from none, and written back over it)
        if (list[i].rev) mine.rev = list[i].rev; else delete mine.rev;
        keepMine(list, mine);
        redraw = writtenElsewhere(mine) !== was;
      }
    }
    allRuns().forEach(function (run) {
      // (a reply stopped as its chat was deleted: it ends in a moment, unsaved)
      if (run.conv !== mine && !state.forgotten[run.conv.id]) keepMine(list, run.conv);
    });
    // A chat of this tab's that its saves could not store (the storage was full), with
    // what was typed and answered in it: not another tab's to drop, the next save keeps
    // it. (One stored before and gone since, unchanged here, was deleted there.)
    state.convs.forEach(function (c) {
      if (!byId[c.id] && !dead[c.id] && !state.forgotten[c.id] && changedHere(c) &&
          list.indexOf(c) < 0) keepMine(list, c);
    });
    state.convs = list;
    // What this tab now holds as stored: the other tab's chats, and its own where they
    // are the same (a chat changed here still differs, and the next save writes it).
    list.forEach(function (c) {
      var there = byId[c.id];
      if (!there) return;
      var text = chatText(c);
      if (c === there || sameText(text, chatText(there))) state.synced[c.id] = text;
    });
    // (the open chat deleted there: none is shown, see dropDeleted)
    if (!moved && !list.some(function (c) { return c.id === state.currentId; })) {
      state.currentId = list.length ? list[0].id : null;
      redraw = moved = true;
    }
    // The same chat, grown in the other tab: a reader scrolled up in it stays put.
    if (redraw || moved) renderAll(!moved); else { renderHeader(); renderSidebar(); }
    // A chat deleted (here or heard of) written back by a tab whose copy of the storage
    // was behind the deletion, its tombstone maybe with it (two tabs deleting at one
    // instant): no tab shows it (Store.loadConversations), and this save writes both
    // again. Once both are written, it is not stored again: no tab saves back and forth.
    if (behind.length || Store.storedAgain(state.forgotten).length) persist();
  }

  /* Whether this tab's chat c, as stored now (`there`, or none), is an older copy
   * written over this tab's last save of it: a lower count of saves (see Store's
   * `rev`), or gone without being deleted (`dead`: deleted in any tab). Or the same
   * count with older messages: a rename in another tab whose copy was one save behind
   * counts that copy's saves up to this tab's and keeps its messages (see Store's
   * "title"), where a tab that had this save would count past it. A copy without a
   * count tells nothing: a tab of the page from before counts was left open, and drops
   * them from every chat it saves (its changes would be taken for old ones). */
  function writtenOver(c, there, dead) {
    if (!state.synced[c.id] || dead[c.id] || state.forgotten[c.id]) return false;
    if (!there) return true;
    if (!there.rev) return false;
    return there.rev < (c.rev || 0) || there.rev === c.rev && olderMessages(there.messages, c.messages);
  }

  /* Whether messages `old` are an earlier state of `mine`: fewer, or the last one a
   * reply that has grown since (as saved while it was written, or marked stopped).
   * Never both ways round, so two tabs cannot each take the other's for the older and
   * save again and again. */
  function olderMessages(old, mine) {
    var n = old.length;
    if (n > mine.length) return false;
    if (!n) return mine.length > 0;
    for (var i = 0; i < n - 1; i++) {
      if (sameOrderJson(old[i]) !== sameOrderJson(mine[i])) return false;
    }
    var a = old[n - 1], b = mine[n - 1];
    if (sameOrderJson(a) === sameOrderJson(b)) return n < mine.length;
    if (n < mine.length || a.role !== "assistant" || b.role !== "assistant") return false;
    var thought = grown(a.reasoning || "", b.reasoning || ""), said = grown(a.content, b.content);
    if (thought < 0 || said < 0) return false;
    // The same text, saved less finished: the writing tab's last save while it wrote
    // (marked stopped) held all of the reply, and its final save only took the mark off.
    return thought + said > 0 || unfinished(a) > unfinished(b);
  }

  /* How unfinished reply m reads: 2 marked stopped (as it is saved while it is written),
   * 1 cut (as saved while a Continue of it waits for its first word), 0 neither. */
  function unfinished(m) {
    return m.stopped ? 2 : m.cut ? 1 : 0;
  }

  /* 1 if text y is x with more after it, 0 if the same, -1 otherwise. */
  function grown(x, y) {
    if (x === y) return 0;
    return y.length > x.length && y.startsWith(x) ? 1 : -1;
  }

  /* Chats whose reply another tab writes: the list marks them, and the open one shows
   * its reply as being written there. Once such a tab's mark is too old (it went without
   * a word), the list's mark goes and the open chat's reply is drawn again as a stopped
   * one. (A mark renewed, or gone with a save, comes with a storage event: see
   * onOtherTabSaved.) */
  var writerTimer = null;
  function planWriterCheck() {
    clearTimeout(writerTimer);
    writerTimer = null;
    if (!writtenElsewhere(current()) && noticeText === MSG_ELSEWHERE_SEND) setNotice(""); // (the message can go now)
    // (a lock held elsewhere tells, with no timer: see watchRelease; a mark, by its age)
    var endsAt = Infinity;
    state.convs.forEach(function (c) {
      if (!runOf(c) && markedElsewhere(c)) endsAt = Math.min(endsAt, c.writingAt + WRITER_GONE_MS);
    });
    if (endsAt === Infinity) return;
    var waitMs = Math.max(0, endsAt - Date.now()) + 50;
    writerTimer = setTimeout(function () {
      writerTimer = null;
      var shown = $("messages").querySelector("[data-testid=elsewhere-note]");
      if (shown && !writtenElsewhere(current())) {
        renderMessages(true);
        updateButtons();
      }
      renderSidebar(); // (and plans the next check)
    }, Math.min(waitMs, 2 * WRITER_GONE_MS));
  }

  /* Takes chat c's writing lock for `run` -> whether this tab may write there: not
   * while another tab holds it. run.letGo() lets it go (the browser does if the tab
   * closes). Without locks: true, the marks tell. */
  function takeWritingLock(c, run) {
    if (!locks) return Promise.resolve(true);
    var name = WRITING_LOCK + c.id;
    function ask(options) {
      return new Promise(function (resolve) {
        locks.request(name, options, function (lock) {
          resolve(!!lock);
          if (!lock) return;
          var aliveGoes = holdAlive(c.id);
          return new Promise(function (letGo) { run.letGo = function () { letGo(); aliveGoes(); }; });
        }).catch(function () { resolve(true); }); // (no lock to be had: the marks tell)
      });
    }
    return ask({ ifAvailable: true }).then(function (got) {
      if (got) return true;
      // Not free: another tab writes there, or a tab that watched it being written
      // holds it shared for a moment (see watchRelease), which is waited for.
      return locks.query().then(function (now) {
        var writer = now.held.some(function (l) { return l.name === name && l.mode === "exclusive"; });
        return !writer && ask({});
      });
    }).catch(function () { return true; });
  }

  /* Takes chat `id`'s alive lock (shared), which this tab holds while it writes there
   * and LAST_SAVE_WAIT_MS after it lets the writing lock go (the function returned says
   * when it does): a tab that sees the writing lock go while the alive lock is still
   * held knows that the writing tab lives and its final save is on its way (see
   * awaitLastSave). Both gone at once, the browser let them go with the tab (closed,
   * crashed, killed): no save is coming, and waiting for one only showed a reply as
   * being written for 3 s more. */
  function holdAlive(id) {
    var release = null, due = false;
    function later() { setTimeout(release, LAST_SAVE_WAIT_MS); }
    locks.request(ALIVE_LOCK + id, { mode: "shared" }, function () {
      return new Promise(function (done) { release = done; if (due) later(); });
    }).catch(function () { /* (no lock: the other tabs wait the whole time) */ });
    return function () { due = true; if (release) later(); };
  }

  /* Asks the browser which writing locks are held: the chats that this tab does not
   * write in are written in another tab (see writtenElsewhere), and for each this tab
   * waits to see it let go. Asked at the start, when another tab saves (its reply may
   * have just begun), and when this tab is shown or focused (it may have been frozen).
   * -> a promise of the answer taken in. */
  function lookAtWritingLocks() {
    if (!locks) return Promise.resolve();
    return locks.query().then(function (now) {
      var held = Object.create(null);
      now.held.forEach(function (l) {
        var id = l.name.slice(WRITING_LOCK.length);
        if (l.name.indexOf(WRITING_LOCK) === 0 && l.mode === "exclusive" &&
            !Object.prototype.hasOwnProperty.call(state.runs, id)) held[id] = true;
      });
      setHeldElsewhere(held);
      Object.keys(held).forEach(watchRelease);
    }, function () { /* (the marks tell) */ });
  }

  /* Waits for chat `id`'s writing lock to be let go, with a shared request granted then
   * (and let go at once): the chat is drawn again that moment, as the writing tab's last
   * save left it (whole, or stopped with Continue if the tab closed or crashed), once
   * that save has come (see awaitLastSave). */
  var watchedLocks = Object.create(null);
  function watchRelease(id) {
    if (watchedLocks[id]) return;
    watchedLocks[id] = true;
    locks.request(WRITING_LOCK + id, { mode: "shared" }, function () {
      delete watchedLocks[id];
      if (!state.heldElsewhere || !state.heldElsewhere[id]) return;
      var held = Object.assign(Object.create(null), state.heldElsewhere);
      delete held[id];
      setHeldElsewhere(held);
    }).catch(function () { delete watchedLocks[id]; });
  }

  /* The writing tab saves its final reply (without its mark), then lets its lock go;
   * but this tab may hear of the lock before the storage event of that save (Chromium
   * does not order the two). Meanwhile the chat, as stored here, is that tab's save
   * before, marked stopped: drawn so, a Send, Continue or Regenerate here saved it over
   * the final reply. So a chat whose copy here still carries the mark stays written
   * elsewhere (see writtenElsewhere) until the save without it comes (onOtherTabSaved),
   * or for LAST_SAVE_WAIT_MS at most: a tab that crashed sends none, and its reply is
   * then drawn stopped, with Continue. (A timer, not the clock: see WRITER_GONE_MS.)
   * Not even that long when the writing tab's alive lock went too (see holdAlive): that
   * tab is gone, and the reply is drawn stopped at once. (Still held, or the browser
   * slower to say, the wait is as before. A tab that closed may have saved a little
   * more on its way out: that save, heard of a moment later, is drawn then.) */
  var LAST_SAVE_WAIT_MS = 3000;
  var ALIVE_LOCK = "chatfile-alive:";
  var lastSaveDue = Object.create(null); // chat id -> its timer, while that save is due
  function awaitLastSave(id) {
    var c = state.convs.find(function (x) { return x.id === id; });
    if (!c || typeof c.writingAt !== "number") return;
    clearTimeout(lastSaveDue[id]);
    var timer = lastSaveDue[id] = setTimeout(waited, LAST_SAVE_WAIT_MS);
    function waited() {
      if (lastSaveDue[id] !== timer) return; // (another wait began since)
      clearTimeout(timer);
      whenElsewhereChanges(function () { delete lastSaveDue[id]; });
    }
    if (locks) {
      locks.query().then(function (now) {
        var alive = now.held.some(function (l) { return l.name === ALIVE_LOCK + id; });
        if (!alive) waited();
      }, function () { /* (the wait tells) */ });
    }
  }

  /* The chats written in other tabs are now those of `held`: the list, and the open
   * chat if it is one that came or went, are drawn again. */
  function setHeldElsewhere(held) {
    // (a lock let go, heard of by watchRelease or by lookAtWritingLocks, either first)
    Object.keys(state.heldElsewhere || {}).forEach(function (id) { if (!held[id]) awaitLastSave(id); });
    whenElsewhereChanges(function () { state.heldElsewhere = held; });
  }

  /* change(), then the list, and the open chat if it is one whose being written
   * elsewhere came or went, are drawn again (when any chat's did). */
  function whenElsewhereChanges(change) {
    var before = state.convs.map(writtenElsewhere), c = current();
    var was = writtenElsewhere(c);
    change();
    if (!state.convs.some(function (x, i) { return writtenElsewhere(x) !== before[i]; })) return;
    if (writtenElsewhere(c) !== was) {
      renderMessages(true);
      updateButtons();
    }
    renderSidebar();
  }

  function newConversation() {
    var c = current();
    if (c && c.messages.length === 0) return c; // reuse the empty one
    c = { id: Store.newId(), title: "New chat", created: Date.now(), updated: Date.now(), messages: [] };
    state.convs.unshift(c);
    state.currentId = c.id;
    persist();
    return c;
  }

  function selectConversation(id) {
    if (id === state.currentId) { closeSidebar(); return; } // (tapping it closes the menu)
    var overlay = sidebarOpen();
    // (a reply being written in the chat left goes on there: see generate)
    state.currentId = id;
    persist();
    clearChatMessages();
    renderAll();
    closeSidebar(); // (a phone's list: the focus goes to the message box)
    // The list was drawn again, without the button that had the focus: the chosen chat's
    // takes it, so that the keyboard stays in the list rather than on nothing.
    if (!overlay) {
      var active = $("conv-list").querySelector("[aria-current=true]");
      if (active) active.focus();
    }
  }

  async function renameCurrent() {
    var c = current();
    if (!c) return;
    var name = await ask("New name for this chat:", { value: c.title, okLabel: "Rename" });
    if (name == null) return;
    c.title = Store.cleanTitle(name);
    c.updated = Date.now();
    persist();
    renderAll();
  }

  async function deleteCurrent() {
    var c = current();
    if (!c) return;
    // (its reply, should another tab write one, stops there: see dropDeleted)
    var ok = await ask("Delete \u201c" + c.title + "\u201d? " +
      (writtenElsewhere(c) ? "The reply being written in it in another tab stops too. " : "") +
      "This cannot be undone.", { confirmOnly: true, okLabel: "Delete", danger: true });
    if (!ok) return;
    stop(c); // (its reply has nowhere to go)
    state.forgotten[c.id] = true;
    state.convs = state.convs.filter(function (x) { return x.id !== c.id; });
    state.currentId = state.convs.length ? state.convs[0].id : null;
    persist();
    renderAll();
    if ($("delete-btn").disabled) $("input").focus(); // (the last chat went: not on nothing)
  }

  function exportCurrent(kind) {
    var c = current();
    if (!c) return;
    if (kind === "json") download(fileStem(c.title) + ".json", asIfStopped(function () { return Store.exportJson(c); }), "application/json");
    else download(fileStem(c.title) + ".md", asIfStopped(function () { return Store.exportMarkdown(c); }), "text/markdown");
  }

  /* Every chat in one JSON file, newest first, which Import reads back. */
  function exportAll() {
    if (!state.convs.length) return;
    var day = new Date().toISOString().slice(0, 10);
    var text = asIfStopped(function () { return Store.exportAll(newestFirst(state.convs)); });
    download("chatfile-chats-" + day + ".json", text, "application/json");
  }

  function newestFirst(convs) {
    return convs.slice().sort(function (a, b) { return b.updated - a.updated; });
  }

  /* What makes two chats the same for an Export all file imported again: restoring a
   * backup in the browser it came from adds only the chats that are not there. */
  function sameness(c) {
    return JSON.stringify([c.title, c.created, c.messages.map(function (m) { return [m.role, m.content]; })]);
  }

  /* What an Export all file brought: new chats, chats already here, entries left out. */
  function importSummary(added, known, skipped) {
    var s = added ? "Imported " + added + (added === 1 ? " chat." : " chats.")
                  : "Nothing new to import.";
    if (known) s += " " + known + (known === 1 ? " chat in the file was" : " chats in the file were") + " here already.";
    if (skipped) s += " " + skipped + (skipped === 1 ? " entry in the file was" : " entries in the file were") + " not a chat and left out.";
    return s;
  }

  function importFile(file) {
    var reader = new FileReader();
    reader.onload = function () {
      try {
        var got = Store.parseImport(String(reader.result));
        var fresh = got.convs, known = 0;
        if (got.all) {
          var here = {};
          state.convs.forEach(function (c) { here[sameness(c)] = true; });
          fresh = got.convs.filter(function (c) { return !here[sameness(c)]; });
          known = got.convs.length - fresh.length;
        }
        state.convs = fresh.concat(state.convs);
        if (fresh.length) state.currentId = newestFirst(fresh)[0].id;
        persist();
        clearChatMessages();
        if (got.all) setNotice(importSummary(fresh.length, known, got.skipped));
        renderAll();
        closeSidebar();
      } catch (e) {
        setNotice(""); // (what an earlier import said is not this file's news)
        setError("Import failed: " + e.message); // (nothing was changed)
      }
    };
    reader.onerror = function () { setError("Import failed: the file could not be read."); };
    reader.readAsText(file);
  }

  /* ---------- rendering ---------- */

  var ROLE_LABELS = { user: "You", assistant: "Assistant", system: "System" };

  var MSG_COPY_LATER = "Copy works once the reply is complete";

  /* partial: the reply is still being written (here or in another tab). Its code blocks'
   * Copy waits, as the reply's own does: it would copy the code so far. */
  function renderBody(body, m, partial) {
    if (m.role === "assistant" && m.reasoning) {
      // The Thinking section drawn last time stays, updated (a redraw at every frame of
      // the reply took the keyboard's focus off its summary, to the page)
      var d = body.firstChild && body.firstChild.thinkingOf === m ? body.firstChild : thinkingEl(m);
      updateThinking(d, partial);
      if (d.parentNode !== body) body.replaceChildren(d);
      while (d.nextSibling) d.nextSibling.remove();
      body.appendChild(Md.render(m.content));
    } else if (m.role === "assistant") body.replaceChildren(Md.render(m.content));
    else body.textContent = m.content; // user and system text is shown exactly as typed
    if (partial) holdCopies(body, true);
  }

  /* Whether a reply's "Thinking" section is open, where the reader opened or closed it
   * (it is drawn again with its chat; not saved). */
  var thinkingOpen = new WeakMap();

  /* A thinking model's reasoning (the server's reasoning_content) above its answer (of
   * message m): open while there is no answer (the reasoning streams, or the reply ended
   * in it), closed once the answer starts, as the reader leaves it after that. Its text is
   * a Text node: nothing of it is read as HTML or Markdown. See updateThinking. */
  function thinkingEl(m) {
    var d = document.createElement("details");
    d.className = "thinking";
    d.setAttribute("data-testid", "thinking");
    d.thinkingOf = m;
    var sum = document.createElement("summary");
    var text = document.createElement("div");
    text.className = "thinking-text";
    d.append(sum, text);
    d.addEventListener("toggle", function () {
      // (setting `open` fires it too, a moment later: only a change is the reader's)
      if (d.open !== d.drawnOpen) thinkingOpen.set(m, d.open);
    });
    return d;
  }

  /* Thinking section d as its message is now (partial: still being written). */
  function updateThinking(d, partial) {
    var m = d.thinkingOf;
    // (opened or closed by the reader since it was drawn: its toggle event may come later)
    if (d.drawnOpen !== undefined && d.open !== d.drawnOpen) thinkingOpen.set(m, d.open);
    var open = thinkingOpen.has(m) ? thinkingOpen.get(m) : !m.content;
    d.drawnOpen = open;
    if (d.open !== open) d.open = open;
    var label = partial && !m.content ? "Thinking\u2026" : "Thinking";
    if (d.firstChild.textContent !== label) d.firstChild.textContent = label;
    if (d.lastChild.textContent !== m.reasoning) d.lastChild.textContent = m.reasoning;
  }

  /* A Copy button held until its reply is complete, or let go. */
  function holdCopy(b, hold) {
    b.disabled = hold;
    if (hold) b.title = MSG_COPY_LATER; else b.removeAttribute("title");
  }

  function holdCopies(body, hold) {
    body.querySelectorAll("[data-testid=copy-code]").forEach(function (b) { holdCopy(b, hold); });
  }

  /* Whether the reply at `index` can be continued: the chat's last message, a reply to a
   * question (the server continues a last assistant message only after another one),
   * cut at the max-tokens limit or stopped. A stopped reply too: Stop is often pressed
   * to read, or by mistake, and Continue keeps what is there where Regenerate loses it.
   * A reply that ran into the end of the context is not offered it: there is no room. */
  function canContinue(c, index) {
    var m = c.messages[index], prev = c.messages[index - 1];
    return index === c.messages.length - 1 && m.role === "assistant" && !!(m.content || m.reasoning) &&
      !!prev && prev.role === "user" && m.cut !== "context" &&
      (m.cut === "length" || m.stopped === true);
  }

  var CUT_NOTES = {
    length: "Cut at the max-tokens limit (see Settings).",
    context: "Stopped at the end of the context: send another message to go on.",
  };

  /* The line under a reply that waits for another chat's reply, which the server is
   * writing first (it writes one at a time): it names that chat and can stop it. Or, when
   * no reply of this tab is ahead but the server says it is busy (see watchQueue), that it
   * answers another tab or program: nothing here can stop that one. */
  function fillWaitNote(note, run) {
    var text = document.createElement("span");
    if (!run.before.length) {
      text.textContent = "Waiting for the server: it is answering another tab or program, and writes one reply at a time. This reply starts when that one is done.";
      note.replaceChildren(text);
      return;
    }
    var other = run.before[0].conv;
    text.textContent = "Waiting for the reply in \u201c" + other.title + "\u201d to finish: the model writes one reply at a time. ";
    note.replaceChildren(text, button("Stop that reply", "stop-other", "Stop that reply (the one in " + other.title + ")",
      function () { stop(other); $("input").focus(); }));
  }

  function waiting(run) { return run.before.length > 0 || run.serverBusy === true; }

  function newWaitNote(run) {
    var note = document.createElement("div");
    note.className = "msg-note";
    note.setAttribute("data-testid", "wait-note");
    fillWaitNote(note, run);
    return note;
  }

  /* The wait note as the run now is: changed, added under the reply's text (when it is
   * shown), or gone. */
  function updateWaitNote(run) {
    if (waiting(run)) {
      if (run.waitEl) fillWaitNote(run.waitEl, run);
      else if (run.bodyEl && run.bodyEl.isConnected) {
        run.waitEl = newWaitNote(run);
        run.bodyEl.after(run.waitEl);
      }
    } else {
      if (run.waitEl) run.waitEl.remove();
      run.waitEl = null;
    }
    sayNewNote();
  }

  /* A read with less than this left when it is first reported shows no note: it would
   * flash and go (a prompt of 300 tokens is read in about a second). */
  var READ_NOTE_MIN_S = 1.5;

  /* The line under a reply whose prompt the server is still reading (a long text pasted:
   * a CPU reads it for seconds, even minutes, before the first word), from the server's
   * prompt_progress (see Api.streamChat): how far it got, and at the rate so far how long
   * it has left. The percentage counts what had to be read, not what the server's cache
   * held already. run.progress is the last report, so that a redraw keeps the note. */
  function reading(run) {
    var p = run.progress;
    if (!p || run.written || p.processed >= p.total) return false;
    if (!run.progressShown) {
      var left = secondsLeft(p);
      if (left !== null && left < READ_NOTE_MIN_S) return false;
      run.progressShown = true; // (shown once: it stays until the first word)
    }
    return true;
  }

  function groupDigits(n) { return Math.round(n).toLocaleString("en-US"); }

  function readParts(p) { // (the prompt's part found in the cache, what is left to read, what of it is read)
    var cached = Math.min(Math.max(p.cache, 0), p.total);
    return { cached: cached, toRead: p.total - cached, done: Math.max(p.processed - cached, 0) };
  }

  /* At the rate so far, the seconds left to read; null before there is a rate. */
  function secondsLeft(p) {
    var done = readParts(p).done;
    return done > 0 && p.time_ms > 0 ? (p.total - p.processed) / (done / p.time_ms) / 1000 : null;
  }

  function readingText(p) {
    var r = readParts(p), cached = r.cached, toRead = r.toRead, done = r.done;
    var pct = toRead > 0 ? Math.min(99, Math.floor(100 * done / toRead)) : 0;
    var text = "Reading the conversation\u2026 " + pct + "% (" + groupDigits(done) + " of " + groupDigits(toRead) +
      (cached > 0 ? " new tokens, " + groupDigits(cached) + " already read before" : " tokens") + ")";
    var left = secondsLeft(p);
    if (left !== null) {
      text += ", about " + (left < 60 ? Math.max(1, Math.round(left)) + " s" :
        left < 3600 ? Math.round(left / 60) + " min" : (left / 3600).toFixed(1) + " h") + " left";
    }
    return text;
  }

  function newProgressNote(run) {
    var note = document.createElement("div");
    note.className = "msg-note";
    note.setAttribute("data-testid", "read-progress");
    note.textContent = readingText(run.progress);
    return note;
  }

  /* The reading note as the run now is: changed, added under the reply's text (when it is
   * shown), or gone. Said by #announce only as it first comes, in the open chat: not at
   * each report. */
  function updateProgressNote(run) {
    if (reading(run) && runOf(run.conv) === run) {
      if (run.progressEl) run.progressEl.textContent = readingText(run.progress);
      else if (run.bodyEl && run.bodyEl.isConnected) {
        run.progressEl = newProgressNote(run);
        (run.waitEl && run.waitEl.isConnected ? run.waitEl : run.bodyEl).after(run.progressEl);
      }
      if (run.progressEl && run.progressEl.isConnected && !run.progressSaid) {
        run.progressSaid = true;
        if (run.conv === current()) say(run.progressEl.textContent);
      }
    } else {
      if (run.progressEl) run.progressEl.remove();
      run.progressEl = null;
    }
  }

  /* The note under the open chat's last message (its reply waits for another, or is
   * written in another tab) is said by #announce as it comes into view, or says
   * something new; not again as the chat is drawn again (at each save of the other
   * tab's, every 2 s). A live region of its own, drawn with its text, might go unsaid. */
  var noteSaid = ""; // the chat and the note last said; "" once none is shown
  function sayNewNote() {
    var c = current(), note = $("messages").querySelector("[data-testid=wait-note], [data-testid=elsewhere-note]");
    var text = note ? note.firstChild.textContent.trim() : "";
    // (the other tab's reply getting its first words changes the words, not the news)
    var key = note ? c.id + "\n" + (note.getAttribute("data-testid") === "wait-note" ? text : "elsewhere") : "";
    if (key && key !== noteSaid) say(text);
    noteSaid = key;
  }

  function messageEl(c, m, index) {
    var run = runOf(c), streaming = !!run && run.msg === m;
    // (the reply another tab writes, or the question it answers)
    var elsewhere = index === c.messages.length - 1 && writtenElsewhere(c);
    var wrap = document.createElement("article");
    wrap.className = "msg msg-" + m.role;
    wrap.setAttribute("data-testid", "message");
    wrap.setAttribute("data-role", m.role);
    wrap.setAttribute("data-index", String(index));
    if (m.leftOut) wrap.classList.add("left-out");
    // (a screen reader waits for it; #announce says it once it is written)
    if (streaming || (elsewhere && m.role === "assistant")) wrap.setAttribute("aria-busy", "true");

    // A heading: a screen reader goes from message to message by them (the chat's title
    // is the h1).
    var role = document.createElement("h2");
    role.className = "msg-role";
    role.textContent = ROLE_LABELS[m.role];
    wrap.appendChild(role);

    var body = document.createElement("div");
    body.className = "msg-body";
    body.dir = "auto"; // Arabic or Hebrew text reads right to left
    body.setAttribute("data-testid", "message-body");
    renderBody(body, m, streaming || elsewhere);
    wrap.appendChild(body);
    if (streaming) {
      wrap.classList.add("streaming");
      run.bodyEl = body; // (the reply grows here, see queueStreamRender)
      run.waitEl = waiting(run) ? newWaitNote(run) : null;
      if (run.waitEl) wrap.appendChild(run.waitEl);
      run.progressEl = reading(run) ? newProgressNote(run) : null;
      if (run.progressEl) wrap.appendChild(run.progressEl);
    }
    if (elsewhere) {
      // Saved as stopped there (so that it is, should that tab go), but it goes on.
      wrap.classList.add("elsewhere");
      var away = document.createElement("div");
      away.className = "msg-note";
      away.setAttribute("data-testid", "elsewhere-note");
      away.textContent = m.role === "assistant"
        ? "Being written in another tab\u2026 The whole reply shows here once it is finished."
        : "A reply to this is being written in another tab\u2026 It shows here once it is finished.";
      wrap.appendChild(away);
    }

    if (m.stopped && !elsewhere) {
      var note = document.createElement("div");
      note.className = "msg-note";
      note.setAttribute("data-testid", "stopped-note");
      note.textContent = "(stopped)";
      wrap.appendChild(note);
    }
    if (m.cut && !elsewhere) {
      var cut = document.createElement("div");
      cut.className = "msg-note";
      cut.setAttribute("data-testid", "cut-note");
      cut.textContent = CUT_NOTES[m.cut];
      wrap.appendChild(cut);
    }

    var actions = document.createElement("div");
    actions.className = "msg-actions";
    var isLast = index === c.messages.length - 1;
    if (m.role === "user") {
      actions.appendChild(button("Edit", "edit", "Edit this message and send it again", function () { startEdit(wrap, c, index); }));
      // A message left without a reply (error, context full): offer to try again.
      if (isLast && !elsewhere) actions.appendChild(button("Retry", "regenerate", "Retry: send this message again", regenerateFromButton));
    }
    if (m.role === "assistant") {
      var copy = button("Copy", "copy-message", "Copy this reply", function () {
        // The same sign as a code block's Copy: otherwise nothing shows that it worked.
        Md.copyText(m.content).then(function () { Md.showCopied(copy); });
      });
      if (streaming || elsewhere) {
        // Not the text so far: Copy is for the whole reply, once it is there.
        holdCopy(copy, true);
        if (streaming) run.copyEl = copy;
      }
      actions.appendChild(copy);
      if (elsewhere) { wrap.appendChild(actions); return wrap; } // (nothing here may write it)
      if (canContinue(c, index)) {
        actions.appendChild(button("Continue", "continue", "Continue this reply where it ended", function () {
          continueReply(c, index);
        }));
      }
      if (isLast) actions.appendChild(button("Regenerate", "regenerate", "Regenerate this reply", regenerateFromButton));
    }
    wrap.appendChild(actions);
    return wrap;
  }

  function welcomeEl() {
    var w = document.createElement("div");
    w.className = "welcome";
    w.setAttribute("data-testid", "welcome");
    var h = document.createElement("h2");
    h.textContent = "Chat with " + (state.props && state.props.model_name ? state.props.model_name : "your model");
    var p = document.createElement("p");
    p.textContent = "Everything runs on this computer; nothing leaves it. Try one of these:";
    var list = document.createElement("div");
    list.className = "examples";
    EXAMPLES.forEach(function (text) {
      list.appendChild(button(text, "example", "Send the example: " + text, function () {
        send(text);
        $("input").focus(); // (the examples are gone; as after Send)
      }));
    });
    w.appendChild(h);
    w.appendChild(p);
    w.appendChild(list);
    if (state.props && state.props.chat_template_builtin === true) {
      // No chat template in the GGUF: answers will look like continued text, so say why.
      var note = document.createElement("p");
      note.className = "base-model-note";
      note.setAttribute("data-testid", "base-model-note");
      note.textContent = "This model has no chat template, so it is probably a base model: " +
        "it continues text rather than answering questions.";
      w.appendChild(note);
    }
    return w;
  }

  /* Where the model's memory of the chat starts: the messages above it were left out of
   * the last request to fit the context (see markLeftOut), though they stay on screen. */
  function leftOutLine() {
    var line = document.createElement("div");
    line.className = "left-out-line";
    line.setAttribute("data-testid", "left-out-line");
    line.setAttribute("role", "note");
    line.textContent = "The model no longer sees the messages above this line: they did not fit in its context" +
      (state.nCtx ? " (" + state.nCtx + " tokens)" : "") + ".";
    return line;
  }

  function nearBottom(box) {
    return box.scrollHeight - box.scrollTop - box.clientHeight < FOLLOW_PX;
  }

  function focusables(root) {
    // (a Thinking section's summary too: a redraw put the focus on the page)
    return Array.prototype.slice.call(root.querySelectorAll("button, a[href], textarea, input, summary"));
  }

  /* Where the focus is among the messages: {index, n}, the n-th control of message
   * `index` (null: of the first screen); null outside them. Redrawn (a reply ended,
   * another tab saved), the control a keyboard was on went, and the focus fell to the
   * page. */
  function focusInMessages() {
    var f = document.activeElement, box = $("messages");
    if (!f || f === box || !box.contains(f)) return null;
    var msg = f.closest("[data-index]");
    return { index: msg ? msg.getAttribute("data-index") : null, n: focusables(msg || box).indexOf(f) };
  }

  /* The focus back where `place` says (see focusInMessages), or on the messages. */
  function refocusMessages(place) {
    if (!place) return;
    var box = $("messages");
    var root = place.index == null ? box : box.querySelector('[data-index="' + place.index + '"]');
    var to = root && focusables(root)[place.n];
    // (checkVisibility: not in Safari before 17.4, where a control drawn is taken as shown)
    var shown = to && (typeof to.checkVisibility !== "function" || to.checkVisibility());
    (shown && !to.disabled ? to : box).focus({ preventScroll: true });
  }

  /* Draws the open chat, scrolled to its end; with keepScroll (the same chat redrawn: a
   * reply ended, another tab saved) a reader who scrolled up stays where they were. */
  function renderMessages(keepScroll) {
    var box = $("messages"), c = current();
    var top = box.scrollTop, stay = keepScroll === true && !nearBottom(box);
    var place = focusInMessages(), kept = keptEdits(box, c);
    box.replaceChildren();
    if (!c || c.messages.length === 0) {
      box.appendChild(welcomeEl());
      kept.forEach(function (k) { keepEdit(box, c, k); });
      refocusMessages(place);
      planWriterCheck();
      sayNewNote();
      return;
    }
    c.messages.forEach(function (m, i) {
      var prev = c.messages[i - 1];
      if (prev && prev.leftOut && !m.leftOut) box.appendChild(leftOutLine());
      box.appendChild(messageEl(c, m, i));
    });
    kept.forEach(function (k) { keepEdit(box, c, k); });
    box.scrollTop = stay ? top : box.scrollHeight;
    refocusMessages(place);
    planWriterCheck();
    sayNewNote();
  }

  function renderSidebar() {
    var list = $("conv-list");
    // (the chat whose button has the focus: its new button takes it, see focusInMessages)
    var focused = list.contains(document.activeElement) ? document.activeElement.getAttribute("data-id") : null;
    list.replaceChildren();
    newestFirst(state.convs).forEach(function (c) {
      var li = document.createElement("li");
      li.className = "conv-item";
      li.setAttribute("data-testid", "conv-item");
      var busy = !!runOf(c), away = !busy && writtenElsewhere(c);
      var b = button(c.title, "conv-open", "Open chat: " + c.title +
        (busy ? " (a reply is being written)" : away ? " (a reply is being written in another tab)" : ""),
        function () { selectConversation(c.id); });
      if (busy) { li.classList.add("busy"); li.setAttribute("data-busy", "true"); b.title = "A reply is being written"; }
      if (away) {
        // (a dot of its own: this tab's Stop does not stop it)
        li.classList.add("elsewhere");
        li.setAttribute("data-elsewhere", "true");
        b.title = "A reply is being written in another tab";
      }
      if (c.id === state.currentId) { li.classList.add("active"); b.setAttribute("aria-current", "true"); }
      b.setAttribute("data-id", c.id);
      li.appendChild(b);
      list.appendChild(li);
      if (c.id === focused) b.focus({ preventScroll: true });
    });
    planWriterCheck(); // (a mark shown goes when its tab stops renewing it)
  }

  function renderHeader() {
    var c = current();
    $("conv-title").textContent = c ? c.title : "New chat";
    ["rename-btn", "export-json-btn", "export-md-btn", "delete-btn"].forEach(function (id) { $(id).disabled = !c; });
    $("export-all-btn").disabled = !state.convs.length;
  }

  function renderAll(keepScroll) {
    renderHeader();
    renderSidebar();
    renderMessages(keepScroll);
    updateButtons();
    updateContextUse();
  }

  /* Send or Stop, for the open chat: a reply being written in another chat has its own
   * Stop there (and under a reply that waits for it). */
  function updateButtons() {
    var busy = !!runOf(current()), f = document.activeElement;
    show($("send-btn"), !busy);
    show($("stop-btn"), busy);
    // (Stop on its own, as its reply ends: the focus is not left on nothing)
    if ((f === $("stop-btn") || f === $("send-btn")) && f.hidden) $("input").focus();
    // (a reply another tab writes: an Edit here would cut the chat under it)
    var locked = busy || writtenElsewhere(current());
    document.querySelectorAll("[data-testid=regenerate],[data-testid=edit],[data-testid=continue]").forEach(function (b) { b.disabled = locked; });
  }

  /* Whether the reader has text selected that touches `el`: redrawing `el` would drop
   * the selection (someone copying a sentence of a reply while it streams). */
  function selectingIn(el) {
    var sel = window.getSelection();
    return !!sel && !sel.isCollapsed && sel.containsNode(el, true);
  }

  /* draw() now, or once the reader lets go of a selection in `el`. */
  function whenNotSelecting(el, draw) {
    if (!selectingIn(el)) { draw(); return; }
    document.addEventListener("selectionchange", function wait() {
      if (selectingIn(el)) return;
      document.removeEventListener("selectionchange", wait);
      draw();
    });
  }

  /* Re-render the streaming bubble at most once per frame; not while text in it is
   * selected (it catches up once the selection goes), nor while another chat is shown
   * (its chat draws the reply so far when it is shown again, see messageEl). */
  function queueStreamRender(run) {
    if (run.renderQueued) return;
    run.renderQueued = true;
    requestAnimationFrame(function () {
      var bodyEl = run.bodyEl;
      if (!bodyEl || !bodyEl.isConnected) { run.renderQueued = false; return; }
      if (selectingIn(bodyEl)) {
        whenNotSelecting(bodyEl, function () {
          run.renderQueued = false;
          queueStreamRender(run);
        });
        return;
      }
      run.renderQueued = false;
      // Whether to follow is decided before the new text lands: a frame may add more
      // than FOLLOW_PX of it (a code block, a table), and a reader at the end keeps up.
      var box = $("messages"), follow = nearBottom(box);
      renderBody(bodyEl, run.msg, runOf(run.conv) === run); // (a frame late: it may have ended)
      if (follow) box.scrollTop = box.scrollHeight;
    });
  }

  /* ---------- editing ---------- */

  /* kept: the edit box drawn again, as it was (see keptEdits), whatever the chat is doing. */
  function startEdit(wrap, c, index, kept) {
    if (!kept && (runOf(c) || writtenElsewhere(c))) return;
    var body = wrap.querySelector(".msg-body");
    var ta = document.createElement("textarea");
    ta.className = "edit-input";
    ta.setAttribute("data-testid", "edit-input");
    ta.setAttribute("aria-label", "Edit message");
    ta.setAttribute("data-conv", c.id); // (see keptEdits)
    ta.value = kept ? kept.text : c.messages[index].content;
    var row = document.createElement("div");
    row.className = "edit-buttons";
    function submit() {
      var text = ta.value;
      if (!text.trim()) return;
      // (an edit box kept while a reply began in this chat, here or in another tab: the
      // edit would cut the chat under that reply)
      if (runOf(c) || writtenElsewhere(c)) { setNotice(MSG_EDIT_WAITS); return; }
      var big = tooBigToSend(c, text);
      if (big) { setError(big); return; } // (the edit box stays as it is)
      ta.removeAttribute("data-conv"); // (done with: not kept by the redraw, see keptEdits)
      // Editing rewinds the chat: everything after this message is dropped.
      c.messages = c.messages.slice(0, index);
      var sent = { role: "user", content: text };
      c.messages.push(sent);
      c.updated = Date.now();
      persist();
      renderAll();
      generate(c, null, sent);
      $("input").focus(); // (the edit box is gone; as after Send)
    }
    function cancel() { // back to the message, where it was, and to its Edit button
      ta.removeAttribute("data-conv");
      renderMessages(true);
      var edit = $("messages").querySelector('[data-index="' + index + '"] [data-testid=edit]');
      if (edit) edit.focus();
    }
    row.appendChild(button("Cancel", "edit-cancel", "Cancel editing", cancel));
    row.appendChild(button("Send", "edit-send", "Send the edited message", submit));
    ta.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
      if (e.key === "Escape") { e.preventDefault(); cancel(); }
    });
    body.replaceChildren(ta, row);
    wrap.querySelector(".msg-actions").hidden = true;
    if (kept) ta.setSelectionRange(kept.start, kept.end); // (focused again by refocusMessages)
    else ta.focus();
  }

  /* The edit boxes open in chat c: [{index, text, start, end}] (its message, what is
   * typed in it, the selection). A redraw of the same chat (another tab saved it, a reply
   * ended) draws them again with them (see keepEdit): it took away what was typed. (It
   * kept only the first box: a second one open in the chat went, with its text.) */
  function keptEdits(box, c) {
    if (!c) return [];
    return Array.prototype.filter.call(box.querySelectorAll("[data-testid=edit-input]"), function (ta) {
      return ta.getAttribute("data-conv") === c.id;
    }).map(function (ta) {
      return { index: Number(ta.closest("[data-index]").getAttribute("data-index")), text: ta.value,
               start: ta.selectionStart, end: ta.selectionEnd };
    });
  }

  /* The edit box `kept` drawn again in chat c; its message gone (the chat was cut in
   * another tab), its text goes to the message box, if that is empty. */
  function keepEdit(box, c, kept) {
    var wrap = box.querySelector('[data-index="' + kept.index + '"]');
    var m = c && c.messages[kept.index];
    if (wrap && m && m.role === "user") { startEdit(wrap, c, kept.index, kept); return; }
    if (!$("input").value) { $("input").value = kept.text; draftChanged(); }
  }

  /* ---------- context budget ---------- */

  /* The messages as the API takes them. Back-to-back messages of one role (a question
   * left unanswered by an error or an early Stop, then the next one) go as one message:
   * many chat templates (Gemma, Mistral) refuse roles that do not alternate. */
  function plain(msgs) {
    // Reasoning goes back only after the last question: a Continue's reply, which goes
    // on from it. Thinking models' templates (Qwen3, QwQ, DeepSeek-R1, GLM) show no
    // reasoning of the turns before it, and sent with every past turn it made a long chat
    // too big for the server to take (a 413 at every message, as the context cut counts
    // what the template shows). (A reply after the last question merges only with
    // replies after it.)
    var lastUser = msgs.map(function (m) { return m.role; }).lastIndexOf("user");
    var out = [];
    msgs.forEach(function (m, i) {
      var prev = out[out.length - 1];
      if (prev && prev.role === m.role && m.role !== "system") prev.content += "\n\n" + m.content;
      else out.push({ role: m.role, content: m.content });
      if (m.reasoning && m.role === "assistant" && i > lastUser) out[out.length - 1].reasoning_content = m.reasoning;
    });
    return out;
  }

  /* Tokens in one message's text (cached), estimated when /tokenize is unavailable. */
  async function tokenCount(text) {
    if (state.tokenCache.has(text)) return state.tokenCache.get(text);
    var n = null;
    try { n = await withAuth(function () { return Api.countTokens(text, false); }); } catch (e) { n = null; }
    // No /tokenize answer: about 3 characters per token is a safe over-estimate for most vocabularies.
    if (n == null) return Math.ceil(text.length / 3) + 1;
    state.tokenCache.set(text, n);
    return n;
  }

  /* Exact prompt size of `msgs`: the server renders its chat template (/apply-template)
   * and counts the result (/tokenize). null when the server can't do either. */
  async function promptTokens(msgs) {
    var key = "\u0000prompt:" + JSON.stringify(msgs);
    if (state.tokenCache.has(key)) return state.tokenCache.get(key);
    try {
      var text = await withAuth(function () { return Api.applyTemplate(msgs); });
      if (text == null) return null;
      var n = await withAuth(function () { return Api.countTokens(text, true); });
      if (n != null) state.tokenCache.set(key, n);
      return n;
    } catch (e) {
      return null;
    }
  }

  /* Prompt size of `msgs`: exact when the server can count it, else estimated per message.
   * -> {n, exact} */
  async function promptSize(msgs) {
    var n = await promptTokens(msgs);
    if (n != null) return { n: n, exact: true };
    n = PROMPT_OVERHEAD_TOK;
    for (var i = 0; i < msgs.length; i++) n += (await tokenCount(msgs[i].content)) + PER_MESSAGE_OVERHEAD_TOK;
    return { n: n, exact: false };
  }

  /* The conversation as it would be sent: the chat's own system message, or the
   * settings' system prompt when it has none. A prompt cleared in the settings is sent
   * empty when the server has a default (`--system`), which the server would otherwise
   * add. -> {pinned: [system?], rest: [...]} */
  function withSystem(c, settings) {
    var rest = c.messages.slice();
    var pinned = [];
    if (rest.length && rest[0].role === "system") pinned.push(rest.shift());
    else if (settings.systemPrompt.trim() || state.defaults.systemPrompt.trim()) {
      pinned.push({ role: "system", content: settings.systemPrompt.trim() ? settings.systemPrompt : "" });
    }
    return { pinned: pinned, rest: rest };
  }

  /* The messages to send, oldest turns dropped to fit. See docs/page.md. cont: the last
   * message is a reply to continue, sent with the question it answers.
   * -> {messages, dropped, fits} (dropped: how many of the chat's messages, after a
   * pinned system message, are left out) */
  async function fitContext(c, settings, cont) {
    var parts = withSystem(c, settings);
    var pinned = plain(parts.pinned), history = parts.rest.slice();
    // The user message we are answering (and the reply that goes on): always sent. The
    // history is cut message by message, and merged (see plain) only as it is sent: a
    // question before it that got no reply (one too long for the context, say) is an
    // older message, left out first. (Cut as one question with it, it made every later
    // message in the chat fail too.)
    var tail = [history.pop()];
    if (cont) tail.unshift(history.pop());
    function build(keepFrom) { return pinned.concat(plain(history.slice(keepFrom).concat(tail))); }

    if (!state.nCtx) return { messages: build(0), dropped: 0, fits: true };
    // Reserve room for the reply; capped at a quarter of the context so a large
    // max-tokens setting doesn't crowd out the chat (see RESERVE_CTX_SHARE).
    var reserveTok = Math.min(settings.maxTokens, Math.floor(state.nCtx / RESERVE_CTX_SHARE));
    var budget = state.nCtx - reserveTok;

    var all = build(0), each = pinned.concat(history, tail);
    var counts = await Promise.all(each.map(function (m) { return tokenCount(m.content); }));
    var exact = await promptTokens(all);
    if (exact != null && exact <= budget) return { messages: all, dropped: 0, fits: true };

    // Per-message template cost: measured from the exact count when we have it.
    var textTok = counts.reduce(function (x, y) { return x + y; }, 0);
    var perMsg = exact != null
      ? Math.max(0, Math.ceil((exact - textTok) / each.length))
      : PER_MESSAGE_OVERHEAD_TOK;
    var base = exact != null ? 0 : PROMPT_OVERHEAD_TOK;
    var histCounts = counts.slice(pinned.length, pinned.length + history.length);

    function estimate(keepFrom) {
      var n = base + (pinned.length + tail.length) * perMsg;
      for (var k = 0; k < pinned.length; k++) n += counts[k];
      for (k = counts.length - tail.length; k < counts.length; k++) n += counts[k];
      for (k = keepFrom; k < history.length; k++) n += histCounts[k] + perMsg;
      return n;
    }
    // Start the kept history on a user turn, so roles still alternate after the cut.
    function nextUserTurn(k) {
      while (k < history.length && history[k].role !== "user") k += 1;
      return k;
    }

    var keepFrom = 0;
    while (keepFrom < history.length && estimate(keepFrom) > budget) keepFrom += 1;
    keepFrom = nextUserTurn(keepFrom);
    // The estimate picked a cut; the exact count has the last word.
    for (;;) {
      var size = await promptTokens(build(keepFrom));
      if (size == null) size = estimate(keepFrom);
      if (size <= budget) return { messages: build(keepFrom), dropped: keepFrom, fits: true };
      if (keepFrom >= history.length) {
        // The latest message alone (with a reply to continue) is bigger than the budget:
        // still send it when it leaves the reply some room (the server stops the reply at
        // the end of the context).
        var fits = size <= state.nCtx - Math.min(MIN_REPLY_TOK, Math.floor(state.nCtx / 8));
        return { messages: fits ? build(keepFrom) : [], dropped: keepFrom, fits: fits };
      }
      keepFrom = nextUserTurn(keepFrom + 1);
    }
  }

  /* Marks the messages the next reply will not see, left out to fit the context: the
   * chat shows them greyed out above a line, and a user who wonders why the model forgot
   * something can see what it still has. `dropped`: how many of the chat's messages
   * fitContext left out, after a pinned system message, which is always sent. */
  function markLeftOut(c, dropped) {
    var first = c.messages.length && c.messages[0].role === "system" ? 1 : 0;
    c.messages.forEach(function (m, i) {
      if (i >= first && i < first + dropped) m.leftOut = true; else delete m.leftOut;
    });
  }

  /* Shows how much of the context the current chat fills (before the next reply). Another
   * chat's count is not left on show while this one's is measured (/apply-template and
   * /tokenize: a moment, longer while the server is busy): it says "measuring" meanwhile. */
  var ctxSeq = 0;
  var ctxShownFor = null; // the chat (id) whose count is shown; "" for none
  async function updateContextUse(exactTok) {
    var seq = ++ctxSeq;
    if (!state.nCtx) { $("ctx").textContent = ""; ctxShownFor = null; return; }
    var total = exactTok, c = current(), shownFor = c ? c.id : "";
    if (shownFor !== ctxShownFor) {
      ctxShownFor = null;
      $("ctx").textContent = "context: measuring\u2026";
    }
    var u = state.usage, last = c && c.messages[c.messages.length - 1];
    // (the server's count holds the reply's reasoning, which the next question does not
    // send: measured instead, as below)
    if (total == null && c && u && u.id === c.id && u.n === c.messages.length &&
        !(last && last.reasoning)) total = u.tok;
    if (total == null) {
      if (!c || !c.messages.length) {
        $("ctx").textContent = "context 0 / " + state.nCtx;
        ctxShownFor = shownFor;
        return;
      }
      // What the model is sent: not the messages the last reply was sent without (they
      // are greyed on screen). Counting them showed "context 2743 / 1024" after a reload.
      var parts = withSystem(c, effectiveSettings());
      var sent = parts.rest.filter(function (m) { return !m.leftOut; });
      // Nor any reasoning: the next question sends none before it (see plain), and a
      // long thought counted here said the chat was fuller than it was.
      var msgs = plain(parts.pinned.concat(sent));
      msgs.forEach(function (m) { delete m.reasoning_content; });
      var size = await promptSize(msgs);
      total = size.exact ? size.n : "~" + size.n;
      if (seq !== ctxSeq) return; // a newer update started meanwhile
    }
    var over = typeof total === "number" && total > state.nCtx;
    // Past the context, the next message drops the oldest turns (docs/page.md): say so,
    // unless the latest question alone is too big, which no cut can help.
    var why = over ? " (full: the oldest messages will be left out)" : "";
    if (over && c && c.messages.length && await latestAloneTooBig(c)) {
      if (seq !== ctxSeq) return;
      why = " (full: the last message alone is too long)";
    }
    $("ctx").textContent = "context " + total + " / " + state.nCtx + why;
    ctxShownFor = shownFor;
  }

  /* Whether the chat's latest user message, with the system message, is over the context. */
  async function latestAloneTooBig(c) {
    var parts = withSystem(c, effectiveSettings());
    var users = plain(parts.rest).filter(function (m) { return m.role === "user"; });
    if (!users.length) return false;
    var size = await promptSize(plain(parts.pinned).concat([users[users.length - 1]]));
    return size.n >= state.nCtx; // the server refuses a prompt that leaves no room
  }

  /* ---------- sending and streaming ---------- */

  /* A new chat's title: its first message's first line, cut at a word with "…" when
   * long ("Write a Python function that checks whet" read as a typo). */
  function titleFrom(text) {
    var line = Store.cleanTitle(text.trim().split("\n")[0]);
    if (line.length <= TITLE_FROM_MESSAGE_CHARS) return line;
    var cut = Store.cutText(line, TITLE_FROM_MESSAGE_CHARS); // (an emoji stays whole)
    var space = cut.lastIndexOf(" ");
    // (a word longer than half the title, a URL say, is cut where it is)
    if (space > TITLE_FROM_MESSAGE_CHARS / 2) cut = cut.slice(0, space);
    return cut.replace(/[\s,;:.\-]+$/, "") + "\u2026";
  }

  function sizeText(bytes) {
    return bytes >= 1 << 20 ? (bytes / (1 << 20)).toFixed(1) + " MB" : Math.ceil(bytes / 1024) + " KB";
  }

  /* Why `text` cannot be sent as a message of chat c (with its system message), or "":
   * the server would refuse the requests that carry it as too large. */
  function tooBigToSend(c, text) {
    var p = state.props || {};
    var limitBytes = Number(p.max_body_bytes) > 0 ? Number(p.max_body_bytes) : MAX_BODY_BYTES;
    var msgs = withSystem(c || { messages: [] }, effectiveSettings()).pinned.concat([{ role: "user", content: text }]);
    var bytes = new TextEncoder().encode(JSON.stringify({ messages: msgs })).length;
    if (bytes + REQUEST_ROOM_BYTES <= limitBytes) return "";
    return "This message is too long to send (" + sizeText(bytes) + "): the server takes at most " +
      sizeText(limitBytes) + " at a time" +
      (state.nCtx ? ", and the model reads at most " + state.nCtx + " tokens of a chat, a few characters each" : "") +
      ". It stays in the box: keep the part that matters, and send that.";
  }

  function send(text) {
    if (runOf(current())) return;
    if (!text.trim()) return;
    // Sent now, the message would be answered after half a reply, and the other tab's
    // save of the whole one would then drop it: it waits in the box.
    if (writtenElsewhere(current())) { setNotice(MSG_ELSEWHERE_SEND); return; }
    var big = tooBigToSend(current(), text);
    if (big) { setError(big); return; }
    var c = current() || newConversation();
    var sent = { role: "user", content: text };
    c.messages.push(sent);
    if (c.title === "New chat") c.title = titleFrom(text);
    c.updated = Date.now();
    $("input").value = "";
    draftChanged();
    persist();
    renderAll();
    generate(c, null, sent);
  }

  function regenerate() {
    var c = current();
    if (!c || runOf(c) || writtenElsewhere(c)) return;
    var n = c.messages.length;
    while (n && c.messages[n - 1].role === "assistant") n--;
    if (!n || c.messages[n - 1].role !== "user") return; // nothing to answer (e.g. only a system message)
    c.messages.length = n;
    persist();
    renderAll();
    generate(c);
  }

  /* Continue: the reply goes on where it ended, in the same message (the server takes a
   * last assistant message as the start of its reply, as llama-server does). */
  function continueReply(c, index) {
    if (runOf(c) || writtenElsewhere(c) || !canContinue(c, index)) return;
    generate(c, c.messages[index]);
    $("input").focus(); // (the button is redrawn away, as Regenerate is)
  }

  /* Stops the reply being written in chat c (by default the open chat's). */
  function stop(c) {
    var run = runOf(c === undefined ? current() : c);
    if (run) run.controller.abort();
  }

  function stopAll() {
    allRuns().forEach(function (run) { run.controller.abort(); });
  }

  /* Regenerate and Retry are redrawn away (and Stop hides itself) once pressed: the
   * message box gets the focus, as after Send, so the keyboard is not left on nothing. */
  function regenerateFromButton() {
    regenerate();
    $("input").focus();
  }

  function describeError(e) {
    if (e instanceof Api.ServerGoneError) return e.cutOff ? MSG_SERVER_GONE_MIDWAY : MSG_SERVER_GONE;
    if (e instanceof Api.ApiError) {
      if (e.status === 400 && /context|too long|exceed/i.test(e.message + " " + e.type + " " + e.code)) {
        return MSG_CONTEXT_FULL + " (Server: " + e.message + ")";
      }
      if (e.status === 401) return "This server needs an API key; reload the page to enter it.";
      if (e.status === 503) return "The model is busy or still loading; try again in a moment. (" + e.message + ")";
      return "The server reported an error: " + e.message;
    }
    return "Something went wrong: " + (e && e.message ? e.message : String(e));
  }

  /* The error of a reply in chat c: said as it is under its own chat, and naming the chat
   * under another (the reader may have left it while it was written). */
  function replyError(c, text, kind) {
    setError((c === current() ? "" : "The reply in \u201c" + c.title + "\u201d: ") + text, kind);
  }

  /* Writes a reply in chat c, or with `cont` (its last message, a reply) goes on with it.
   * The reply belongs to c: it keeps streaming there while other chats are shown, and
   * is saved there. Sent while another chat's reply is being written, the request waits
   * in the server's queue (it answers one at a time), and the reply says so. Another tab
   * that began writing in c a moment ago (it took c's lock first, before this tab heard
   * of it): nothing is written, and `sent` (the message just sent, if any) goes back to
   * the box, as when Send finds the chat written elsewhere. */
  async function generate(c, cont, sent) {
    if (runOf(c)) return;
    var settings = effectiveSettings();
    // The last reply's usage counted what this one replaces (Regenerate, an edit): the
    // chat may have as many messages again, with other text, so it would be shown still.
    if (state.usage && state.usage.id === c.id) state.usage = null;
    setError("");
    setNotice("");
    $("tps").textContent = ""; // the last reply's speed is not this one's
    var run = { conv: c, msg: null, controller: new AbortController(), bodyEl: null, copyEl: null,
                waitEl: null, renderQueued: false, before: allRuns(), was: null, wasChars: 0,
                serverBusy: false, queueTimer: null, started: false,
                progress: null, progressEl: null, progressShown: false, progressSaid: false,
                written: false };
    state.runs[c.id] = run;
    updateButtons();
    renderSidebar();
    if (!(await takeWritingLock(c, run))) { writtenThere(c, sent); return; }
    var controller = run.controller;
    var msg = null, was = null, addedChars = 0, addedThought = 0, aborted = false;
    var firstAt = 0, lastAt = 0, pieces = 0;
    try {
      // /props again before every reply: the server may have been restarted on this port
      // with another model (context size, tokenizer) while the tab stayed open. Without
      // /props (it failed, e.g. before the API key was entered) the context size would be
      // unknown and nothing trimmed to fit. Once read, a failure here is left to the reply
      // itself to report.
      await loadProps(!!state.props);
      settings = effectiveSettings(); // with the server's defaults
      var plan = await fitContext(c, settings, !!cont);
      if (controller.signal.aborted) return;
      if (!plan.fits && cont) {
        // No room left, and none to be made by leaving out older turns: the reply ends
        // here, as one that ran into the end of the context (no Continue offered).
        cont.cut = "context";
        replyError(c, MSG_NO_ROOM_TO_CONTINUE);
        return;
      }
      if (!plan.fits) { replyError(c, MSG_CONTEXT_FULL); return; }
      markLeftOut(c, plan.dropped);
      if (plan.dropped > 0 && c === current()) setNotice(MSG_DROPPED);

      if (cont) {
        // Its marks go while it goes on; they come back if it gets no further.
        msg = cont;
        was = run.was = { stopped: msg.stopped, cut: msg.cut };
        run.wasChars = replyChars(msg); // (see asIfStopped)
        delete msg.stopped;
        delete msg.cut;
      } else {
        msg = { role: "assistant", content: "" };
        c.messages.push(msg);
      }
      run.msg = msg;
      startBeat(); // (other tabs now show it as being written here)
      // (said before the chat is drawn: a note that it waits comes after)
      if (c === current()) say((cont ? "Continuing the reply" : "Writing a reply") + "\u2026 Escape stops it.");
      if (c === current()) renderAll(); else renderSidebar();

      var request = {
        messages: plan.messages,
        stream: true,
        temperature: settings.temperature,
        top_p: settings.topP,
        max_tokens: settings.maxTokens,
        stream_options: { include_usage: true },
        return_progress: true, // (the prompt_progress chunks: see updateProgressNote)
      };
      if (settings.seed !== "") request.seed = settings.seed;

      watchQueue(run);
      var result = await withAuth(function () {
        return Api.streamChat(request, function (piece, thought) {
          lastAt = performance.now();
          pieces += 1;
          if (!firstAt) firstAt = lastAt;
          if (thought) {
            msg.reasoning = (msg.reasoning || "") + piece;
            addedThought += piece.length;
          } else {
            msg.content += piece;
            addedChars += piece.length;
          }
          if (!run.started) turnCame(run);
          if (!run.written) { // (the reading note goes with the first word)
            run.written = true;
            updateProgressNote(run);
          }
          queueStreamRender(run);
          saveRunsIfDue(); // (marked as stopped until it ends: see persist)
        }, controller.signal, function (progress) {
          // The server reads this reply's prompt: nothing waits ahead of it any more.
          var p = { total: Number(progress.total), cache: Number(progress.cache) || 0,
                    processed: Number(progress.processed), time_ms: Number(progress.time_ms) || 0 };
          if (!isFinite(p.total) || !isFinite(p.processed) || run.written) return;
          if (!run.started) turnCame(run);
          run.progress = p;
          updateProgressNote(run);
        });
      });
      var here = c === current();
      if (here) showSpeed(result, firstAt, lastAt);
      // The server's own count of what this turn used; shown until the chat changes.
      if (result.usage && result.usage.total_tokens) {
        state.usage = { id: c.id, n: c.messages.length, tok: result.usage.total_tokens };
      }
      var notes = plan.dropped > 0 ? [MSG_DROPPED] : [];
      if (result.finishReason === "length") {
        var used = result.usage && result.usage.total_tokens;
        // (the chat goes on: the next message leaves the oldest ones out, see fitContext)
        msg.cut = state.nCtx && used >= state.nCtx - 1 ? "context" : "length";
        notes.push(msg.cut === "context"
          ? "The reply stopped at the end of the context: send another message to go on (the oldest messages will be left out), or start a new chat."
          : "The reply stopped at the max-tokens limit (see Settings): Continue goes on with it.");
      }
      if (here) setNotice(notes.join(" "));
    } catch (e) {
      aborted = !!e && e.name === "AbortError";
      if (!aborted) {
        var gone = e instanceof Api.ServerGoneError;
        // Gone before the reply's first word (a long prompt's read, say): no reply is kept
        // (below), so the question has Retry, not the Regenerate "in the middle of this
        // reply" named, and no reply is there to be in the middle of. Gone during a
        // Continue: the reply stays, and Continue goes on with it where Regenerate would
        // throw it away.
        var text = !gone ? describeError(e) : cont ? MSG_SERVER_GONE_CONTINUING
          : !addedChars && !addedThought ? MSG_SERVER_GONE : describeError(e);
        replyError(c, text, gone ? "gone" : "");
        if (gone) serverSeemsGone();
      }
      if (was && !addedChars && !addedThought) {
        // A Continue that got no further: the reply is as it was, marks and all.
        if (was.stopped) msg.stopped = true;
        if (was.cut) msg.cut = was.cut;
      } else if (msg && (msg.content || msg.reasoning)) {
        // A reply stopped (or cut off by an error) half way is kept, marked as stopped.
        // Stopped, it shows its speed so far, measured on the pieces it got (not under
        // another chat: the status line is that chat's).
        msg.stopped = true;
        if (aborted && c === current()) showSpeed({ chunks: pieces }, firstAt, lastAt);
      } else if (msg) {
        // Before its first word: no empty reply is kept (or sent as history), so that
        // Regenerate or Edit can try again.
        c.messages.splice(c.messages.indexOf(msg), 1);
      }
    } finally {
      clearTimeout(run.queueTimer);
      run.started = true; // (no more asking the server whether it waits)
      delete state.runs[c.id]; // (before the save: it is saved as it is now)
      updateProgressNote(run); // (gone: the reply ended, was stopped or failed)
      allRuns().forEach(function (r) { // replies that waited for this one
        var k = r.before.indexOf(run);
        if (k < 0) return;
        r.before.splice(k, 1);
        r.serverBusy = false; // (its own turn may have come: the next look at /slots tells)
        updateWaitNote(r);
      });
      if (run.copyEl) holdCopy(run.copyEl, false);
      if (run.bodyEl) holdCopies(run.bodyEl, false); // (its code blocks' too)
      c.updated = Date.now();
      persist();
      // (after the save: a tab that sees the lock let go finds the reply as it ended)
      if (run.letGo) run.letGo();
      if (run.bodyEl) run.bodyEl.parentNode.removeAttribute("aria-busy"); // (see messageEl)
      sayReplyEnded(c, msg, addedChars, aborted, addedThought);
      if (c === current()) {
        // (a reader who scrolled up to read is not moved, and one selecting text keeps it
        // until they let go: only then is the chat redrawn)
        renderHeader();
        renderSidebar();
        updateButtons();
        updateContextUse();
        whenNotSelecting($("messages"), function () {
          if (c !== current() || runOf(c)) return; // (another chat, or a new reply, drew it)
          renderMessages(true);
          updateButtons(); // (the redrawn messages' Edit and Regenerate)
        });
      } else {
        // Written while another chat was shown (or in a chat deleted meanwhile): the
        // list no longer marks it busy; the chat is drawn as it is when it is opened.
        renderSidebar();
        updateButtons();
      }
    }
  }

  /* Markdown `text` as a screen reader should hear it: as the page shows it (no marks,
   * no code block's "Copy"), a line between blocks. */
  function spokenText(text) {
    var d = document.createElement("div");
    d.appendChild(Md.render(text));
    d.querySelectorAll(".code-head").forEach(function (h) { h.remove(); });
    d.querySelectorAll("p, li, pre, h1, h2, h3, h4, h5, h6, blockquote, tr").forEach(function (b) { b.append("\n"); });
    d.querySelectorAll("td, th").forEach(function (b) { b.append(" "); });
    return d.textContent.trim();
  }

  /* Tells a screen reader what the reply `msg` of chat c brought (addedChars of it were
   * written now), once it ends: #messages is not a live region, which would say the
   * reply again at every frame. In the open chat, the reply (a Continue: what it added);
   * in another, that it is finished. An error says itself (#error is an alert). */
  function sayReplyEnded(c, msg, addedChars, aborted, addedThought) {
    if (state.forgotten[c.id]) return; // (deleted: the reply went with it)
    if (c !== current()) {
      if ((addedChars || addedThought) && !msg.stopped) say("The reply in \u201c" + c.title + "\u201d is finished.");
      return;
    }
    if (addedChars) {
      say("Assistant" + (msg.stopped ? " (stopped)" : "") + ": " + spokenText(msg.content.slice(-addedChars)));
    } else if (addedThought && !aborted) {
      // A reply that ended in its reasoning (max tokens, the server gone): nothing was
      // said after "Writing a reply…" (the notice says why it ended, and about Continue)
      say("Assistant" + (msg.stopped ? " (stopped)" : "") + ": no answer yet, only its thinking (the Thinking section).");
    } else if (aborted) {
      say("Stopped.");
    }
  }

  /* generate found chat c's lock held by another tab: this tab's run goes, the chat is
   * drawn as written there, and `sent` goes back to the box. (A save of that tab's soon
   * brings the chat as it has it.) */
  function writtenThere(c, sent) {
    delete state.runs[c.id];
    var msgs = c.messages;
    if (sent && msgs[msgs.length - 1] === sent) {
      msgs.pop();
      if (!$("input").value) { $("input").value = sent.content; draftChanged(); }
    }
    if (sent && c === current()) setNotice(MSG_ELSEWHERE_SEND);
    var held = Object.assign(Object.create(null), state.heldElsewhere);
    held[c.id] = true;
    // (c was not held elsewhere while this tab had a run there: it comes, and the list,
    // and c if it is shown, are drawn again)
    setHeldElsewhere(held);
    watchRelease(c.id);
    if (c === current()) updateContextUse(); // (without the message that went back)
  }

  /* A reply that has no first word after QUEUE_CHECK_MS may wait behind a reply the
   * server writes for someone else: another tab, another program (this tab's own replies
   * ahead of it are named by the wait note already). The server's /slots tells; the
   * page asks every QUEUE_POLL_MS until the first word (or the first report of its
   * prompt's reading), and the note says so meanwhile. (A reply slow to start for its
   * own sake, a long prompt, shows no wait note: the server then works on it, has no
   * other request waiting, and reports how far it read, see updateProgressNote.) */
  function watchQueue(run) {
    function ask() {
      run.queueTimer = null;
      if (run.started) return;
      // (behind a reply of this tab's, the note names that one: nothing to ask)
      if (run.before.length) { run.queueTimer = setTimeout(ask, QUEUE_POLL_MS); return; }
      Api.serverBusy().catch(function () { return false; }).then(function (busy) {
        if (run.started) return;
        if (busy !== run.serverBusy) {
          run.serverBusy = busy;
          updateWaitNote(run);
        }
        run.queueTimer = setTimeout(ask, QUEUE_POLL_MS);
      });
    }
    run.queueTimer = setTimeout(ask, QUEUE_CHECK_MS);
  }

  /* The run's turn came: its first word, or the server's first report of reading its
   * prompt (it reads one request at a time). It waits for nothing any more. */
  function turnCame(run) {
    run.started = true;
    run.before = [];
    run.serverBusy = false;
    updateWaitNote(run);
  }

  function showSpeed(result, firstAt, lastAt) {
    var perS = null;
    if (result.timings && result.timings.predicted_per_second) {
      perS = Number(result.timings.predicted_per_second);
    } else if (firstAt && lastAt > firstAt) {
      // Time from the first piece to the last covers (pieces - 1) tokens.
      var n = result.usage && result.usage.completion_tokens ? result.usage.completion_tokens : result.chunks;
      if (n > 1) perS = (n - 1) / ((lastAt - firstAt) / 1000);
    }
    $("tps").textContent = perS ? perS.toFixed(1) + " tokens/s" : "";
  }

  /* ---------- layout: phone sidebar, textarea ---------- */

  function sidebarOpen() { return document.body.classList.contains("sidebar-open"); }

  /* At phone width the list of chats slides over the chat. The focus goes into it, and
   * the chat behind is inert meanwhile: Tab would otherwise walk the buttons hidden
   * under the scrim. */
  function openSidebar() {
    document.body.classList.add("sidebar-open");
    show($("scrim"), true);
    $("menu-btn").setAttribute("aria-expanded", "true");
    var active = $("conv-list").querySelector("[aria-current=true]");
    (active || $("new-chat")).focus();
    document.querySelector("main").inert = true; // (after the focus has left it)
  }

  /* focusMenu: closed by ✕, the scrim or Escape, the focus goes back to ☰. Otherwise
   * (a chat was chosen, Settings opened) it goes to the message box if it was in the
   * list, which is hidden now. */
  function closeSidebar(focusMenu) {
    var wasOpen = sidebarOpen();
    document.body.classList.remove("sidebar-open");
    show($("scrim"), false);
    $("menu-btn").setAttribute("aria-expanded", "false");
    document.querySelector("main").inert = false;
    if (!wasOpen) return;
    var f = document.activeElement;
    if (focusMenu === true) $("menu-btn").focus();
    else if (!f || f === document.body || $("sidebar").contains(f)) $("input").focus();
  }

  function autosize() {
    var ta = $("input");
    ta.style.height = "auto";
    ta.style.height = Math.min(ta.scrollHeight, 200) + "px";
  }

  /* The message box's direction, as dir="auto" finds it (its first letter's), worked out
   * here: with dir="auto", Chromium works the direction out again for each line of the
   * box's text, and a pasted log of 1.5 MB froze the tab for seconds (a few ms now). */
  var RE_LETTER = /\p{L}/u;
  var RE_RTL_LETTER = /^[\u0590-\u08FF\uFB1D-\uFDFF\uFE70-\uFEFF\u{10800}-\u{10FFF}\u{1E800}-\u{1EFFF}]/u;
  function textDirection(text) {
    var first = RE_LETTER.exec(text);
    return first && RE_RTL_LETTER.test(first[0]) ? "rtl" : "ltr";
  }

  /* The draft changed (typed, pasted, sent): the box's direction and height follow it. */
  function draftChanged() {
    var ta = $("input"), dir = textDirection(ta.value);
    if (ta.dir !== dir) ta.dir = dir;
    autosize();
  }

  /* ---------- watching the server ---------- */

  /* A user may quit chatfile (or close its window) and start it again, maybe with
   * another model, while this tab stays open. The page checks /health now and then and
   * says so when the server is gone; when it answers again the page reads /props again
   * (the header, the context size) and says it is back. The draft in the message box
   * and the chats are never touched. /health is cheap: it never waits for the model. */
  function watchServer() {
    document.addEventListener("visibilitychange", function () {
      // Hidden: no checks at all (a background tab must not poll for hours). Shown:
      // check at once, the server may have been restarted meanwhile.
      if (document.hidden) planCheck(null); else planCheck(0);
    });
    planCheck(ALIVE_POLL_MS);
  }

  /* The next check in `ms` (null: none), replacing any planned one. */
  function planCheck(ms) {
    clearTimeout(link.timer);
    link.timer = null;
    if (ms == null || link.stopped || document.hidden) return;
    link.timer = setTimeout(checkServer, ms);
  }

  async function checkServer() {
    link.timer = null;
    if (link.checking || link.stopped || document.hidden) return;
    link.checking = true;
    var nextMs = ALIVE_POLL_MS;
    try {
      nextMs = await serverAnswered(await Api.health());
    } catch (e) {
      // Not ServerGoneError (a proxy's error page, say): the server is there; ask later.
      if (e instanceof Api.ServerGoneError) nextMs = serverGone();
    } finally {
      link.checking = false;
    }
    if (!link.timer) planCheck(nextMs); // (unless something planned an earlier check)
  }

  /* The server did not answer. The first time, say so; then ask again, less and less
   * often. -> the wait before the next check. */
  function serverGone() {
    if (link.quit) link.quit = "gone";
    if (!link.down) {
      link.down = true;
      link.goneDelayMs = GONE_POLL_FIRST_MS;
      // A reply that failed already said it, in words about that reply: keep those.
      if (errorKind !== "gone") setError(MSG_SERVER_DOWN, "gone");
    } else {
      link.goneDelayMs = Math.min(link.goneDelayMs * 2, GONE_POLL_MAX_MS);
    }
    return link.goneDelayMs;
  }

  /* A request failed for want of a server: check soon, rather than at the usual pace.
   * (Only a check that fails makes it down: a server that answers it is there, and the
   * error of the request that failed stays as it was said.) */
  function serverSeemsGone() {
    if (link.stopped || link.down || link.checking) return; // (down: the back-off goes on)
    planCheck(GONE_POLL_FIRST_MS);
  }

  /* /health answered h. -> the wait before the next check. */
  async function serverAnswered(h) {
    // (the server told to quit may answer for a moment more)
    if (link.quit === "stopping") return GONE_POLL_FIRST_MS;
    if (link.quit) backAfterQuit();
    var restarted = h.instance && link.instance && h.instance !== link.instance;
    if (h.instance) link.instance = h.instance;
    if (h.status === "loading") {
      // Started again and loading its model: there is nothing to chat with yet.
      link.loading = true;
      setNotice("chatfile is starting again: loading the model… " + Math.round(h.progress * 100) + "%");
      return RELOAD_POLL_MS;
    }
    if (h.status === "error") {
      if (!link.failed) setError("The model failed to load: " + h.message, "failed");
      link.failed = true;
      link.down = link.loading = false;
      return ALIVE_POLL_MS;
    }
    if (link.down || link.loading || link.failed || restarted || link.propsDelayMs) {
      if (!(await serverBack())) return link.propsDelayMs;
    }
    return ALIVE_POLL_MS;
  }

  /* The server answers again (or is another one now): read it again, say so. -> false
   * when its /props could not be read: the page has not what it needs to chat (the
   * model's context, its name), so it is not "running again" yet; the outage's state
   * stays as it is, and the next check (1 s, then 2, 4... 10 s) tries again. */
  async function serverBack() {
    var wasOut = link.down || link.loading || link.failed;
    var before = state.props ? String(state.props.model_name || "") : "";
    // (what the error line says of the outage, before this one tried and failed, if so)
    var said = link.outageError || (errorKind === "gone" || errorKind === "failed" ? $("error").textContent : "");
    var failed = await loadProps(true);
    if (failed && !(failed instanceof Api.ApiError && failed.status === 401)) {
      link.propsDelayMs = link.propsDelayMs ? Math.min(link.propsDelayMs * 2, GONE_POLL_MAX_MS) : RELOAD_POLL_MS;
      if (!(failed instanceof Api.ServerGoneError)) {
        // (kind "gone": it goes when the server is back, as the outage's error would)
        link.outageError = said;
        setError("The chatfile server answers again, but could not say how it is set up. " +
          describeError(failed).replace(/([^.!?])$/, "$1.") + " This page asks again by itself.", "gone");
        if (link.loading) setNotice(""); // (not loading any more)
      }
      return false;
    }
    link.outageError = "";
    link.propsDelayMs = 0;
    link.down = link.loading = link.failed = false;
    if (failed) {
      // A 401 the key dialog did not mend: the server is there, and says what it wants
      // (asking again would open that dialog at every check).
      setError(describeError(failed));
      setNotice("");
      return true;
    }
    var name = state.props ? String(state.props.model_name || "") : "";
    if (said) setError("");
    var news = [];
    if (wasOut) news.push(MSG_SERVER_BACK);
    if (name && name !== before) news.push("The model is now " + name + ".");
    // The error that goes named the button that now works: the notice names it instead.
    if (said === MSG_SERVER_GONE) news.push("Press Retry to send your message again.");
    if (said === MSG_SERVER_GONE_MIDWAY) news.push("Press Regenerate for a whole reply.");
    if (said === MSG_SERVER_GONE_CONTINUING) news.push("Press Continue to go on with the reply.");
    var c = current();
    if (news.length) setNotice(news.join(" "));
    // Only what depends on the server is drawn again: a chat being read, edited or
    // answered stays as it is. The first screen names the model.
    renderHeader();
    if (!c || !c.messages.length) renderMessages(true);
    updateContextUse();
    return true;
  }

  /* ---------- quitting ---------- */

  /* Stops the server: a chat started by a double-click may have no window to close, and
   * it holds the model's memory until it stops. */
  async function quitServer() {
    var ok = await ask("Stop chatfile? Your chats stay saved in this browser; start the program again to go on.",
      { confirmOnly: true, okLabel: "Quit", danger: true });
    if (!ok) return;
    stopAll();
    link.stopped = true; // (its absence from now on is no news)
    planCheck(null);
    try {
      await withAuth(Api.quit);
    } catch (e) {
      if (!(e instanceof Api.ServerGoneError)) {
        link.stopped = false; // (it runs on: watch it again, as before)
        if (!$("app").hidden) planCheck(ALIVE_POLL_MS);
        setError(describeError(e));
        return;
      }
    }
    show($("app"), false);
    show($("loading"), true);
    $("loading-text").textContent = "chatfile has stopped. You can close this tab; started again, " +
      "chatfile comes back here by itself, with what you were typing.";
    $("load-progress").hidden = true;
    show($("loading-quit"), false);
    // Watched as a server gone (every 1, 2, 4, 8, then 10 s, while the tab is shown):
    // the user may start it again, and this tab is then the chat as it was (it said
    // "stopped" for good, and only a reload, which loses the draft, brought it back).
    var started = document.body.getAttribute("data-ready") === "true";
    link.stopped = false;
    link.quit = "stopping";
    link.down = true;
    link.goneDelayMs = GONE_POLL_FIRST_MS;
    if (started) planCheck(GONE_POLL_FIRST_MS); else watchServer();
  }

  /* A server answers after a Quit from this tab: it was started again. The chat comes
   * back as it was (the draft, the edit boxes); a tab whose chat never opened (its model
   * had failed to load) starts afresh. */
  function backAfterQuit() {
    link.quit = "";
    if (document.body.getAttribute("data-ready") !== "true") { location.reload(); return; }
    show($("loading"), false);
    show($("app"), true);
    $("input").focus();
  }

  /* ---------- start-up ---------- */

  /* Resolves after ms, or once the tab is shown again if it is hidden (then or later):
   * a hidden tab asks the server nothing. */
  function pause(ms) {
    return sleep(ms).then(function () {
      if (!document.hidden) return;
      return new Promise(function (resolve) {
        document.addEventListener("visibilitychange", function shown() {
          if (document.hidden) return;
          document.removeEventListener("visibilitychange", shown);
          resolve();
        });
      });
    });
  }

  async function waitForServer() {
    var text = $("loading-text"), bar = $("load-progress");
    var goneMs = GONE_POLL_FIRST_MS;
    for (;;) {
      try {
        var h = await Api.health();
        goneMs = GONE_POLL_FIRST_MS;
        if (h.instance) link.instance = h.instance;
        if (h.status === "error") {
          // Loading failed for good (bad file, out of memory): say why, stop polling.
          text.textContent = "The model failed to load: " + h.message;
          bar.hidden = true;
          show($("loading-quit"), h.canQuit); // (the server stays up to show this)
          return false;
        }
        if (h.status !== "loading") return true;
        text.textContent = "Loading the model… " + Math.round(h.progress * 100) + "%";
        bar.value = h.progress;
        await pause(HEALTH_POLL_MS);
      } catch (e) {
        if (e instanceof Api.ServerGoneError) {
          text.textContent = MSG_SERVER_GONE_AT_START; // (this loop keeps asking)
          bar.removeAttribute("value");
          await pause(goneMs);
          goneMs = Math.min(goneMs * 2, GONE_POLL_MAX_MS);
        } else {
          return true; // e.g. 401: /props will ask for the key
        }
      }
    }
  }

  /* The server runs a bundle (a file not named .gguf: the one the user opened) or a
   * model file (`chatfile run model.gguf`): the messages for a stopped server say how to
   * start that one again, in its own words. */
  function nameHowToStartAgain(modelPath) {
    var name = String(modelPath || "").split(/[\\/]/).pop();
    var how = !name || /\.gguf$/i.test(name) ? "(for example `chatfile run`)"
      : "(open \u201c" + name + "\u201d again)";
    // (a function, so that a "$&" in the file's name is not read as a pattern)
    function swap(msg) { return msg.replace(startAgainHow, function () { return how; }); }
    MSG_SERVER_GONE = swap(MSG_SERVER_GONE);
    MSG_SERVER_GONE_MIDWAY = swap(MSG_SERVER_GONE_MIDWAY);
    MSG_SERVER_GONE_CONTINUING = swap(MSG_SERVER_GONE_CONTINUING);
    MSG_SERVER_GONE_AT_START = swap(MSG_SERVER_GONE_AT_START);
    MSG_SERVER_DOWN = swap(MSG_SERVER_DOWN);
    startAgainHow = how;
  }

  /* Reads the server's properties; quiet: a failure keeps the last ones, unannounced.
   * -> null, or the error that kept them from being read. */
  async function loadProps(quiet) {
    try {
      var p = await withAuth(Api.props);
      // Another model (or template, or context size) since the last read: the cached
      // token counts and the last reply's usage measured the old one.
      var key = JSON.stringify([p.model_path, p.model_name, p.n_ctx, p.chat_template]);
      if (key !== state.modelKey) {
        state.tokenCache.clear();
        state.usage = null;
        state.modelKey = key;
        ctxShownFor = null; // (the count shown is the old model's)
      }
      state.props = p;
      nameHowToStartAgain(p.model_path);
      // It answers: a reply under way (a Retry) must not later be told the server is gone.
      link.down = link.loading = link.failed = false;
      link.propsDelayMs = 0;
      link.outageError = "";
      show($("quit-btn"), p.can_quit === true);
      state.nCtx = Number(p.n_ctx) || 0;
      var g = p.default_generation_settings || {};
      if (g.params && typeof g.params === "object") g = g.params; // llama-server's newer layout
      if (typeof g.temperature === "number") state.defaults.temperature = g.temperature;
      if (typeof g.top_p === "number") state.defaults.topP = g.top_p;
      if (typeof g.n_predict === "number" && g.n_predict > 0) state.defaults.maxTokens = g.n_predict;
      if (typeof p.system_prompt === "string") state.defaults.systemPrompt = p.system_prompt;
      $("model-name").textContent = p.model_name ? String(p.model_name) : "";
      document.title = p.title ? String(p.title) : (p.model_name ? p.model_name + " \u2014 chatfile" : "chatfile");
      return null;
    } catch (e) {
      if (!quiet) setError(describeError(e));
      return e;
    }
  }

  function wireEvents() {
    // Send hides itself once pressed: the message box gets the focus back, so the next
    // message can be typed straight away.
    $("send-btn").addEventListener("click", function () { send($("input").value); $("input").focus(); });
    $("stop-btn").addEventListener("click", function () { stop(); $("input").focus(); }); // (see regenerateFromButton)
    $("input").addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        send($("input").value);
      }
    });
    $("input").addEventListener("input", draftChanged);
    document.addEventListener("keydown", function (e) {
      if (e.key !== "Escape" || e.isComposing || e.defaultPrevented || document.querySelector("dialog[open]")) return;
      if (sidebarOpen()) closeSidebar(true); // (the phone's list first: it is in front)
      else if (runOf(current())) stop(); // (the open chat's reply: the one in view)
    });
    $("new-chat").addEventListener("click", function () {
      // (a reply being written in the chat left goes on there: see generate)
      newConversation();
      clearChatMessages();
      renderAll();
      closeSidebar();
      $("input").focus();
    });
    $("rename-btn").addEventListener("click", renameCurrent);
    $("delete-btn").addEventListener("click", deleteCurrent);
    $("export-json-btn").addEventListener("click", function () { exportCurrent("json"); });
    $("export-md-btn").addEventListener("click", function () { exportCurrent("md"); });
    $("export-all-btn").addEventListener("click", exportAll);
    $("import-btn").addEventListener("click", function () { $("import-file").click(); });
    $("import-file").addEventListener("change", function () {
      var f = this.files && this.files[0];
      if (f) importFile(f);
      this.value = "";
    });
    $("settings-btn").addEventListener("click", openSettings);
    $("settings-save").addEventListener("click", saveSettingsFromForm);
    $("settings-cancel").addEventListener("click", function () { $("settings-dialog").close(); });
    document.querySelectorAll("dialog").forEach(function (d) { d.addEventListener("close", placeAnnounce); });
    $("settings-reset").addEventListener("click", function () {
      var d = state.defaults;
      $("set-system").value = d.systemPrompt;
      $("set-temperature").value = d.temperature;
      $("set-top-p").value = d.topP;
      $("set-max-tokens").value = d.maxTokens;
      $("set-seed").value = d.seed;
    });
    $("menu-btn").addEventListener("click", function () {
      if (document.body.classList.contains("sidebar-open")) closeSidebar(); else openSidebar();
    });
    $("close-sidebar").addEventListener("click", function () { closeSidebar(true); });
    // Wider than a phone again (a window made bigger, a phone turned): no overlay to close.
    window.matchMedia("(max-width: 720px)").addEventListener("change", function (e) {
      if (!e.matches) closeSidebar();
    });
    window.addEventListener("storage", onOtherTabSaved);
    // (a tab frozen while hidden may have missed a lock let go or taken meanwhile)
    document.addEventListener("visibilitychange", lookAtWritingLocks);
    window.addEventListener("focus", lookAtWritingLocks);
    // Closing or reloading the tab mid-reply keeps all that has arrived, not only what
    // the last periodic save had.
    window.addEventListener("pagehide", function () {
      if (allRuns().length) asIfStopped(save, true); // (their chats' marks go: see writtenElsewhere)
    });
    $("scrim").addEventListener("click", function () { closeSidebar(true); });
    $("quit-btn").addEventListener("click", quitServer);
    $("loading-quit").addEventListener("click", quitServer);
  }

  async function start() {
    Api.setApiKey(Store.loadApiKey());
    state.settings = Store.loadSettings();
    state.convs = Store.loadConversations();
    state.convs.forEach(function (c) { state.synced[c.id] = chatText(c); });
    var saved = Store.loadCurrentId();
    state.currentId = state.convs.some(function (c) { return c.id === saved; }) ? saved : (state.convs[0] ? state.convs[0].id : null);
    wireEvents();
    if (!(await waitForServer())) return;
    await loadProps();
    show($("loading"), false);
    show($("app"), true);
    draftChanged(); // (a draft the browser kept across a reload: its direction)
    await lookAtWritingLocks(); // (a chat written elsewhere is drawn so from the start)
    document.body.setAttribute("data-ready", "true");
    renderAll();
    $("input").focus();
    watchServer();
  }

  start();
})();
