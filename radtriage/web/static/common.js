/* Shared by every page: bar widths from data attributes (inline styles are forbidden by the CSP), and one
   place that notices an expired session on a background request and says so. */
"use strict";
(function () {
  document.querySelectorAll("[data-w]").forEach(function (el) { el.style.setProperty("--w", el.dataset.w + "%"); });
  document.querySelectorAll("[data-t]").forEach(function (el) { el.style.setProperty("--t", el.dataset.t + "%"); });

  function showSessionBanner(message) {
    var banner = document.getElementById("session-banner");
    if (!banner) { return; }
    banner.textContent = "";
    banner.appendChild(document.createTextNode(message + " "));
    var link = document.createElement("a");
    link.href = "/login?reason=expired&next=" + encodeURIComponent(location.pathname + location.search);
    link.textContent = "Sign in again";
    banner.appendChild(link);
    banner.hidden = false;
  }

  /* fetch() that turns a 401 into the banner and any other failure into a rejected promise with a message. */
  window.radtriageFetch = function (url, options) {
    return fetch(url, Object.assign({ credentials: "same-origin", headers: { "Accept": "application/json" } }, options || {}))
      .then(function (response) {
        if (response.status === 401) {
          return response.json().catch(function () { return {}; }).then(function (body) {
            showSessionBanner(body.message || "Your session has expired.");
            var error = new Error("signed-out"); error.signedOut = true; throw error;
          });
        }
        return response;
      });
  };
  window.radtriageSessionBanner = showSessionBanner;
})();
