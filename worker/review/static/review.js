// Live updates without a front-end build: an element with data-live="URL" is refreshed from
// that URL (a server-rendered fragment) every few seconds, while nobody is typing in it.
(function () {
  function refresh(element) {
    if (element.contains(document.activeElement) && document.activeElement.tagName === "INPUT") {
      return;
    }
    fetch(element.dataset.live, { credentials: "same-origin", headers: { "X-Fragment": "1" } })
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (html) {
        if (html !== null && html !== element.dataset.shown) {
          element.dataset.shown = html;
          element.innerHTML = html;
        }
      })
      .catch(function () { /* the next turn tries again */ });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(function (element) {
      setInterval(function () { refresh(element); }, Number(element.dataset.every || 3000));
    });
  });
})();
