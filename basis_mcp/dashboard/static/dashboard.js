// basis-mcp dashboard: polls the board fragment and swaps it in when it changed (ETag). No dependencies.
(function () {
  "use strict";
  var board = document.getElementById("board");
  if (!board) return;
  // a token that came in the address never reaches this page: the server answered it with a 303 to the clean URL
  var etag = board.getAttribute("data-etag");
  var every = parseInt(board.getAttribute("data-poll-ms"), 10) || 2000;
  var url = board.getAttribute("data-fragment");
  var live = document.getElementById("live");
  var busy = false;

  function say(text, ok) {
    if (!live) return;
    live.textContent = text;
    live.className = ok ? "ok" : "bad";
  }

  function tick() {
    if (busy || document.hidden) return;
    busy = true;
    fetch(url, {headers: {"If-None-Match": '"' + etag + '"'}, cache: "no-store", credentials: "same-origin"})
      .then(function (r) {
        if (r.status === 304) { say("live", true); return null; }
        if (r.status === 401) { say("signed out: open this page with ?token= again", false); return null; }
        if (!r.ok) { say("the server answered " + r.status, false); return null; }
        var tag = r.headers.get("ETag");
        return r.text().then(function (html) {
          if (tag) etag = tag.replace(/"/g, "");
          board.innerHTML = html;
          board.setAttribute("data-etag", etag);
          say("live", true);
        });
      })
      .catch(function () { say("the server does not answer", false); })
      .then(function () { busy = false; });
  }

  setInterval(tick, every);
  document.addEventListener("visibilitychange", tick);
})();
