// The live feed: the dashboard's stream (stream.js). Each message carries a payment's row, rendered
// by the server, and for a settled payment the sentence to announce.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var rows = document.getElementById("feed-rows");
  var news = document.getElementById("announcements");
  var KEEP_SAID = 20;
  var KEEP_ROWS = 200;

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

  window.followStream(live.dataset.stream, function (data) {
    upsert(data.row);
    if (data.say) announce(data.say, data.status);
  });
})();
