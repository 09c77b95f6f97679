// graphwire run inspector: the API key (typed once, kept in sessionStorage), the CSRF token on
// POSTs, the live feed of the Runs page, and the resume / replay buttons. No inline script runs
// anywhere (the Content-Security-Policy forbids it); all text from messages reaches the DOM as
// text (textContent), never as HTML.
(function () {
  "use strict";
  var KEY = "graphwire.apiKey";
  var meta = function (name) {
    var el = document.querySelector('meta[name="' + name + '"]');
    return el ? el.getAttribute("content") : "";
  };
  var authOn = meta("graphwire-auth") === "on";
  var csrf = meta("graphwire-csrf");
  var page = document.getElementById("page");
  var keyForm = document.getElementById("key-form");
  var forget = document.getElementById("forget-key");
  var live = null;
  var liveOn = false;

  function markLive() {
    var state = document.getElementById("live-state");
    if (!state) { return; }
    state.textContent = liveOn ? "live" : "reconnecting…";
    state.className = liveOn ? "live on" : "live";
  }

  function key() { return sessionStorage.getItem(KEY) || ""; }

  // an API key goes as X-API-Key; a JWT (three base64url parts) as a bearer token
  function headers(extra) {
    var h = extra || {};
    var k = key();
    if (!authOn || !k) { return h; }
    if (/^[\w-]+\.[\w-]+\.[\w-]+$/.test(k)) { h["Authorization"] = "Bearer " + k; }
    else { h["X-API-Key"] = k; }
    return h;
  }

  function askForKey(message) {
    sessionStorage.removeItem(KEY);
    keyForm.hidden = false;
    forget.hidden = true;
    document.getElementById("key-error").textContent = message || "";
    keyForm.querySelector("input").focus();
  }

  function start() {
    if (authOn && !key()) { askForKey(""); return; }
    keyForm.hidden = true;
    forget.hidden = !authOn;
    htmx.trigger(page, "gw-ready");
  }

  function showError(text) {
    var p = document.createElement("p");
    p.className = "error";
    p.textContent = text;
    page.replaceChildren(p);
  }

  function detail(body, status) {
    try { var d = JSON.parse(body).detail; if (typeof d === "string") { return d; }
          return JSON.stringify(d); } catch (e) { return "HTTP " + status; }
  }

  document.body.addEventListener("htmx:configRequest", function (e) {
    headers(e.detail.headers);
  });
  document.body.addEventListener("htmx:responseError", function (e) {
    var xhr = e.detail.xhr;
    var text = detail(xhr.responseText, xhr.status);
    if (xhr.status === 401) { askForKey(text); return; }
    showError(text);
  });
  document.body.addEventListener("htmx:sendError", function () {
    showError("the gateway does not answer; retrying when you reload");
  });
  document.body.addEventListener("htmx:afterSettle", function () { markLive(); follow(); });

  keyForm.addEventListener("submit", function (e) {
    e.preventDefault();
    sessionStorage.setItem(KEY, keyForm.querySelector("input").value.trim());
    keyForm.querySelector("input").value = "";
    start();
  });
  forget.addEventListener("click", function () {
    sessionStorage.removeItem(KEY);
    location.reload();
  });

  // Live feed of the Runs page: server-sent events over fetch (EventSource cannot send the
  // key header). Each "changed" event reloads the table (htmx, hx-select keeps the filters).
  function follow() {
    var table = document.querySelector("#runs-table[data-live]");
    if (!table || live) { return; }
    live = new AbortController();
    fetch("/ui/api/live", { headers: headers({}), signal: live.signal }).then(function (res) {
      if (!res.ok || !res.body) { throw new Error("HTTP " + res.status); }
      var reader = res.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) { throw new Error("closed"); }
          buffer += decoder.decode(chunk.value, { stream: true });
          var frames = buffer.split("\n\n");
          buffer = frames.pop();
          frames.forEach(function (frame) {
            if (/^event: changed$/m.test(frame)) {
              var current = document.getElementById("runs-table");
              if (current) { htmx.trigger(current, "gw-changed"); }
            }
          });
          return pump();
        });
      }
      liveOn = true;
      markLive();
      return pump();
    }).catch(function () {
      liveOn = false;
      markLive();
    }).then(function () {
      live = null;
      setTimeout(follow, 2000);
    });
  }

  function post(url, body, outcome) {
    outcome.textContent = "sending…";
    return fetch(url, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", "X-CSRF-Token": csrf }),
      body: JSON.stringify(body),
      credentials: "same-origin",
    }).then(function (res) {
      return res.text().then(function (text) {
        if (res.status === 401) { askForKey(detail(text, res.status)); }
        if (!res.ok) { throw new Error(detail(text, res.status)); }
        return JSON.parse(text);
      });
    }).catch(function (err) {
      outcome.textContent = err.message;
      outcome.className = "outcome error";
      throw err;
    });
  }

  // <form class="json-post" data-url data-field>: the textarea's JSON as {field: value}
  document.addEventListener("submit", function (e) {
    var form = e.target.closest("form.json-post");
    if (!form) { return; }
    e.preventDefault();
    var outcome = form.querySelector(".outcome");
    var value;
    try { value = JSON.parse(form.querySelector("textarea").value); } catch (err) {
      outcome.textContent = "not JSON: " + err.message;
      outcome.className = "outcome error";
      return;
    }
    var body = {};
    body[form.dataset.field] = value;
    post(form.dataset.url, body, outcome).then(function (done) {
      outcome.textContent = "submitted as " + done.request_id;
      outcome.className = "outcome ok";
      location.assign(done.run_url);
    }, function () {});
  });

  // <button class="post" data-url data-confirm>: confirm, POST, say what happened
  document.addEventListener("click", function (e) {
    var button = e.target.closest("button.post");
    if (!button) { return; }
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) { return; }
    var outcome = button.parentElement.querySelector(".outcome");
    button.disabled = true;
    post(button.dataset.url, {}, outcome).then(function (done) {
      outcome.className = "outcome ok";
      outcome.textContent = "replayed to " + done.topic + " ";
      if (done.run_url) {
        var a = document.createElement("a");
        a.href = done.run_url;
        a.textContent = "see the run";
        outcome.appendChild(a);
      }
    }, function () { button.disabled = false; });
  });

  // htmx attaches its triggers on DOMContentLoaded (its listener was added first: it loads first)
  if (document.readyState === "complete") { start(); }
  else { document.addEventListener("DOMContentLoaded", start); }
})();
