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
  // a product field offers the catalog's matches for what is typed (20 at most), asked of
  // the desk as the person types: the page never carries the whole product list
  function suggest(input) {
    var list = document.getElementById(input.getAttribute("list"));
    var asked = input.value.trim();
    if (asked.length < 2) { return; }
    fetch(input.dataset.suggest + "?q=" + encodeURIComponent(asked), { credentials: "same-origin" })
      .then(function (answer) { return answer.ok ? answer.json() : { products: [] }; })
      .then(function (found) {
        if (input.value.trim() !== asked) { return; }
        list.replaceChildren.apply(list, found.products.map(function (p) {
          var option = document.createElement("option");
          option.value = p.product_id;
          option.textContent = p.sku + " " + (p.name || "");
          return option;
        }));
      })
      .catch(function () { /* typing on asks again */ });
  }
  document.addEventListener("input", function (event) {
    if (event.target.dataset && event.target.dataset.suggest) { suggest(event.target); }
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(function (element) {
      setInterval(function () { refresh(element); }, Number(element.dataset.every || 3000));
    });
  });
})();
