/* chatfile page: talking to the chatfile server (llama-server / OpenAI compatible).
 *
 * The API key, when one is needed, only ever travels in the Authorization header:
 * never in a URL and never in a console message.
 *
 * Exposes window.ChatApi.
 */
(function () {
  "use strict";

  /* The server answered with an error body {"error": {message, type, code}}. */
  function ApiError(status, message, type, code) {
    this.name = "ApiError";
    this.status = status;
    this.message = message;
    this.type = type || "";
    this.code = code;
  }
  ApiError.prototype = Object.create(Error.prototype);

  /* fetch() itself failed: nothing is listening at the page's origin. */
  function ServerGoneError(cutOff) {
    this.name = "ServerGoneError";
    this.message = "The chatfile server is not running.";
    this.cutOff = !!cutOff; // it went away in the middle of an answer
  }
  ServerGoneError.prototype = Object.create(Error.prototype);

  var apiKey = "";

  function headers(json) {
    var h = {};
    if (json) h["Content-Type"] = "application/json";
    if (apiKey) h["Authorization"] = "Bearer " + apiKey;
    return h;
  }

  async function request(path, options) {
    options = options || {};
    var init = { method: options.method || "GET", headers: headers(options.body !== undefined), signal: options.signal };
    if (options.body !== undefined) init.body = JSON.stringify(options.body);
    var resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      if (e && e.name === "AbortError") throw e;
      throw new ServerGoneError();
    }
    return resp;
  }

  async function errorFrom(resp) {
    var text = "";
    try { text = await resp.text(); } catch (e) { /* body lost: status is enough */ }
    var err = null;
    try { err = JSON.parse(text).error; } catch (e) { /* not JSON */ }
    if (err && typeof err === "object") {
      return new ApiError(resp.status, String(err.message || "Error " + resp.status), err.type, err.code);
    }
    if (typeof err === "string") return new ApiError(resp.status, err);
    return new ApiError(resp.status, "The server answered " + resp.status + " " + resp.statusText);
  }

  async function getJson(path) {
    var resp = await request(path);
    if (!resp.ok) throw await errorFrom(resp);
    return resp.json();
  }

  /* -> {status: "ok"}, {status: "loading", progress} or {status: "error", message};
   * each with `instance` when the server names itself (which model, which options: it
   * changes when the server is started again with another). 503 is a normal answer. */
  async function health() {
    var resp = await request("health");
    var body = {};
    try { body = await resp.json(); } catch (e) { /* empty body */ }
    if (!body || typeof body !== "object") body = {};
    var instance = typeof body.instance === "string" ? body.instance : "";
    if (resp.status === 503 && body.status === "error") {
      return { status: "error", message: String(body.message || (body.error && body.error.message) || "unknown error"),
               canQuit: body.can_quit === true, instance: instance };
    }
    if (resp.status === 503) return { status: "loading", progress: Number(body.progress) || 0, instance: instance };
    if (!resp.ok) throw await errorFrom(resp);
    return { status: body.status || "ok", instance: instance };
  }

  /* Number of tokens in `text`, or null when the server can't tell us. */
  async function countTokens(text, addSpecial) {
    var body = { content: text };
    if (addSpecial) body.add_special = true;
    var resp = await request("tokenize", { method: "POST", body: body });
    if (resp.status === 401) throw await errorFrom(resp);
    if (!resp.ok) return null;
    var body = await resp.json();
    return Array.isArray(body.tokens) ? body.tokens.length : null;
  }

  /* The prompt text the server's chat template makes of `messages`, or null when the
   * server has no /apply-template (then the page estimates instead). */
  async function applyTemplate(messages) {
    var resp = await request("apply-template", { method: "POST", body: { messages: messages } });
    if (resp.status === 401) throw await errorFrom(resp);
    if (!resp.ok) return null;
    var body = await resp.json();
    return typeof body.prompt === "string" ? body.prompt : null;
  }

  /* Streams a chat completion. Calls onDelta(text) for each piece of content and
   * resolves to {finishReason, usage, timings, chunks}. Rejects with ApiError,
   * ServerGoneError or (on Stop) an AbortError. With onProgress, a request with
   * return_progress has it called with each chunk's prompt_progress ({total, cache,
   * processed, time_ms}: how much of the prompt the server has read), which is no
   * content (not counted in chunks). */
  async function streamChat(body, onDelta, signal, onProgress) {
    var resp = await request("v1/chat/completions", { method: "POST", body: body, signal: signal });
    if (!resp.ok) throw await errorFrom(resp);
    var reader = resp.body.getReader();
    var decoder = new TextDecoder();
    var pending = "";
    var result = { finishReason: null, usage: null, timings: null, chunks: 0 };
    var done = false;

    function handleEvent(data) {
      if (data === "[DONE]") { done = true; return; }
      var chunk;
      try { chunk = JSON.parse(data); } catch (e) { return; }
      if (chunk.error) {
        var err = chunk.error;
        throw new ApiError(Number(err.code) || 500, String(err.message || "Generation failed"), err.type, err.code);
      }
      if (chunk.usage) result.usage = chunk.usage;
      if (chunk.timings) result.timings = chunk.timings;
      var progress = chunk.prompt_progress;
      if (progress && typeof progress === "object" && onProgress) onProgress(progress);
      var choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      // A thinking model's reasoning (llama-server's reasoning_content) comes first:
      // onDelta(piece, true).
      var thought = choice.delta && choice.delta.reasoning_content;
      if (typeof thought === "string" && thought) {
        result.chunks += 1;
        onDelta(thought, true);
      }
      var piece = choice.delta && choice.delta.content;
      if (typeof piece === "string" && piece) {
        result.chunks += 1;
        onDelta(piece);
      }
      if (choice.finish_reason) result.finishReason = choice.finish_reason;
    }

    while (!done) {
      var step;
      try {
        step = await reader.read();
      } catch (e) {
        if (e && e.name === "AbortError") throw e;
        if (signal && signal.aborted) { var ab = new Error("aborted"); ab.name = "AbortError"; throw ab; }
        throw new ServerGoneError(true);
      }
      if (step.done) break;
      pending += decoder.decode(step.value, { stream: true });
      // SSE events end with a blank line; keep the unfinished tail for the next read.
      var events = pending.split(/\r?\n\r?\n/);
      pending = events.pop();
      for (var k = 0; k < events.length && !done; k++) {
        events[k].split(/\r?\n/).forEach(function (line) {
          if (line.indexOf("data:") === 0) handleEvent(line.slice(5).trim());
        });
      }
    }
    if (!done && pending.trim().indexOf("data:") === 0) handleEvent(pending.trim().slice(5).trim());
    try { reader.cancel(); } catch (e) { /* already closed */ }
    // The server ends a stream by closing the connection (HTTP/1.0), so a server that
    // died mid-answer looks like an ending too: only [DONE] or a finish_reason is one.
    if (!done && !result.finishReason) throw new ServerGoneError(true);
    return result;
  }

  /* Whether the server is busy with a request that is not the caller's: its one worker
   * is writing a reply while other requests wait in its queue (the caller's among them,
   * when the caller has one waiting). A server that works on the caller's own request, a
   * long prompt say, has none waiting. llama-server's /slots has no queue count: there
   * a busy slot is all there is to go on. false when /slots cannot tell. */
  async function serverBusy() {
    var resp = await request("slots");
    if (!resp.ok) return false;
    var body = null;
    try { body = await resp.json(); } catch (e) { return false; }
    var slot = Array.isArray(body) ? body[0] : null;
    if (!slot || typeof slot !== "object" || slot.is_processing !== true) return false;
    return typeof slot.queued === "number" ? slot.queued > 0 : true;
  }

  /* Stops the server (the page's Quit). */
  async function quit() {
    var resp = await request("quit", { method: "POST", body: {} });
    if (!resp.ok) throw await errorFrom(resp);
  }

  window.ChatApi = {
    ApiError: ApiError,
    ServerGoneError: ServerGoneError,
    setApiKey: function (k) { apiKey = k || ""; },
    hasApiKey: function () { return !!apiKey; },
    health: health,
    props: function () { return getJson("props"); },
    serverBusy: serverBusy,
    countTokens: countTokens,
    applyTemplate: applyTemplate,
    streamChat: streamChat,
    quit: quit,
  };
})();
