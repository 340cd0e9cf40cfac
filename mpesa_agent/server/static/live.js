// The live feed: one EventSource on the dashboard's stream. Each message carries a payment's row,
// rendered by the server, and for a settled payment the sentence to announce. EventSource
// reconnects by itself and resumes with Last-Event-ID, so no change is missed or shown twice.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var rows = document.getElementById("feed-rows");
  var news = document.getElementById("announcements");
  var state = document.getElementById("live-status");
  var KEEP_SAID = 20;
  var KEEP_ROWS = 200;

  function show(name, text) {
    state.dataset.state = name;
    state.textContent = text;
  }

  function upsert(html) {
    var holder = document.createElement("tbody");
    holder.innerHTML = html;
    var row = holder.firstElementChild;
    var old = document.getElementById(row.id);
    if (old) {
      old.replaceWith(row);
    } else {
      rows.prepend(row);
      while (rows.children.length > KEEP_ROWS) rows.lastElementChild.remove();
    }
    row.classList.add("flash");
    var empty = document.getElementById("feed-rows-empty");
    if (empty) empty.remove();
  }

  function announce(text, status) {
    var item = document.createElement("li");
    item.className = "say status-" + status;
    item.textContent = text;
    news.prepend(item);
    while (news.children.length > KEEP_SAID) news.lastElementChild.remove();
  }

  var source = new EventSource(live.dataset.stream);
  source.onopen = function () { show("live", "Live"); };
  source.onerror = function () {
    if (source.readyState === EventSource.CLOSED) {
      show("off", "Disconnected: reload the page (you may need to sign in again)");
    } else {
      show("reconnecting", "Reconnecting…");
    }
  };
  source.onmessage = function (message) {
    var data = JSON.parse(message.data);
    upsert(data.row);
    if (data.say) announce(data.say, data.status);
  };
})();
