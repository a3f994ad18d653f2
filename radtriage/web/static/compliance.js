/* The export form exports what the search form currently says, even when it was changed without searching. */
"use strict";
(function () {
  var exportButton = document.getElementById("export-audit");
  if (!exportButton) { return; }
  exportButton.form.addEventListener("submit", function () {
    exportButton.form.querySelectorAll("[data-mirror]").forEach(function (hidden) {
      var source = document.getElementById(hidden.dataset.mirror);
      if (source) { hidden.value = source.value; }
    });
  });
})();
