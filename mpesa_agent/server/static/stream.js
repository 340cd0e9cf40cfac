// Following the dashboard's event stream, shared by the live feed (live.js) and the batches pages
// (batches.js): an EventSource whose state is shown in #live-status. EventSource reconnects by
// itself and resumes with Last-Event-ID, so no change is missed or shown twice.
window.followStream = function (url, onMessage) {
  "use strict";
  var state = document.getElementById("live-status");

  function show(name, text) {
    state.dataset.state = name;
    state.textContent = text;
  }

  var source = new EventSource(url);
  source.onopen = function () { show("live", "Live"); };
  source.onerror = function () {
    if (source.readyState === EventSource.CLOSED) {
      show("off", "Disconnected: reload the page (you may need to sign in again)");
    } else {
      show("reconnecting", "Reconnecting…");
    }
  };
  source.onmessage = function (message) { onMessage(JSON.parse(message.data)); };
  return show;
};
