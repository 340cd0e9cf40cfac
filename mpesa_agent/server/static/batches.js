// The batches pages, live: the dashboard's batch stream (stream.js), whose messages say only
// which batch an event (batch.* or one of its payments) was about. When it is the one shown (or,
// on the list, any), the page fetches its changing part again, rendered by the server, and swaps
// it in: at most one fetch at a time, and no more often than every data-wait milliseconds.
// The stream resumes with Last-Event-ID, so a change during a reconnect still causes a refresh.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var wanted = live.dataset.batch || null;
  var wait = parseInt(live.dataset.wait || "500", 10);
  var busy = false, again = false, timer = null, last = 0, show = null;

  function swap(html) {
    var holder = document.createElement("div");
    holder.innerHTML = html;
    var fresh = holder.querySelector("#" + live.dataset.target);
    var old = document.getElementById(live.dataset.target);
    if (!fresh || !old) return;
    old.replaceWith(fresh);
    var box = document.getElementById("cancel-box");
    if (box && fresh.dataset.unsent !== undefined) {  // cancelling is offered only while items wait to be sent
      box.hidden = fresh.dataset.unsent === "0";
      document.getElementById("cancel-count").textContent = fresh.dataset.unsent;
    }
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  }

  function refresh() {
    timer = null;
    if (busy) { again = true; return; }
    busy = true;
    last = Date.now();
    fetch(live.dataset.part, {credentials: "same-origin"})
      .then(function (response) {
        if (!response.ok || response.redirected) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(swap)
      .catch(function () { show("off", "Could not refresh: reload the page (you may need to sign in again)"); })
      .then(function () {
        busy = false;
        if (again) { again = false; schedule(); }
      });
  }

  function schedule() {
    if (timer === null) timer = setTimeout(refresh, Math.max(0, last + wait - Date.now()));
  }

  show = window.followStream(live.dataset.stream, function (data) {
    if (!wanted || data.batch_id === wanted) schedule();
  });
})();
