// The desk's little JavaScript, no front-end build:
// - live updates: an element with data-live="URL" is refreshed from that URL (a
//   server-rendered fragment) every few seconds, while nobody is typing or changing in it;
// - product suggestions for the "none of these" field, asked of the desk as one types;
// - the review keys on a scan: 1-5 choose a candidate, Enter confirms it, J / K next and
//   previous scan to review; a click on the bag photo zooms it;
// - a question asked before a form marked data-confirm is sent.
(function () {
  function refresh(element) {
    if (element.dataset.editing ||
        (element.contains(document.activeElement) && document.activeElement.tagName === "INPUT")) {
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

  // the page never carries the whole product list: 20 matches of what is typed at most
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

  function candidates() { return document.getElementById("candidates"); }

  function choose(key) {
    var list = candidates();
    if (!list || list.dataset.locked) { return; }
    list.querySelectorAll("li").forEach(function (item) {
      item.classList.toggle("selected", item.dataset.key === key);
    });
    var chosen = list.querySelector("li.selected button.confirm");
    if (chosen) { chosen.focus(); }
  }

  function confirmChosen() {
    var list = candidates();
    var chosen = list && !list.dataset.locked && list.querySelector("li.selected form");
    if (chosen) { chosen.requestSubmit(); }
  }

  function follow(id) {
    var link = document.getElementById(id);
    if (link) { window.location.href = link.href; }
  }

  function unlock() {  // "Change": the choices again, for a correction
    var list = candidates();
    if (!list) { return; }
    delete list.dataset.locked;
    var detail = document.getElementById("scan-detail");
    if (detail) { detail.dataset.editing = "1"; }
    document.querySelectorAll("#scan-detail button[disabled], #scan-detail input[disabled]")
      .forEach(function (control) { control.disabled = false; });
    list.querySelectorAll("li:not(.chosen) button.confirm").forEach(function (button) {
      button.textContent = "This one instead";
    });
  }

  document.addEventListener("keydown", function (event) {
    var typing = /^(INPUT|TEXTAREA|SELECT)$/.test(event.target.tagName);
    if (typing || event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (/^[1-5]$/.test(event.key)) { choose(event.key); event.preventDefault(); }
    else if (event.key === "Enter" && event.target.tagName !== "BUTTON") {
      confirmChosen(); event.preventDefault();
    }
    else if (event.key === "j" || event.key === "J") { follow("next"); }
    else if (event.key === "k" || event.key === "K") { follow("previous"); }
  });
  document.addEventListener("click", function (event) {
    if (event.target.id === "change") { unlock(); }
    if (event.target.id === "bag-photo") { event.target.closest("figure").classList.toggle("zoomed"); }
  });
  document.addEventListener("submit", function (event) {  // one click, one confirmation
    if (event.target.closest("#scan-detail")) {
      event.target.closest("#scan-detail").querySelectorAll("button").forEach(function (button) {
        button.disabled = true;
      });
    }
  });
  // a form with data-confirm="question" is sent only once the person agrees (no inline
  // handlers: the desk's Content-Security-Policy runs only this file's script)
  document.addEventListener("submit", function (event) {
    var question = event.target.dataset && event.target.dataset.confirm;
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });
  document.addEventListener("input", function (event) {
    if (event.target.dataset && event.target.dataset.suggest) { suggest(event.target); }
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(function (element) {
      setInterval(function () { refresh(element); }, Number(element.dataset.every || 3000));
    });
    if (window.location.hash === "#change") { unlock(); }
  });
})();
