// robsal report: interactive saliency viewer. Plain JS, no network, no libraries.
// Data: the JSON element #viewer-data written by robsal.report.html.
// All text goes through textContent (never innerHTML), so data strings cannot inject markup.
(function () {
  "use strict";
  var holder = document.getElementById("viewer-data");
  if (!holder) { return; }
  var data = JSON.parse(holder.textContent);
  var imageSel = document.getElementById("viewer-image");
  var methodSel = document.getElementById("viewer-method");
  var slider = document.getElementById("viewer-model");
  var modelName = document.getElementById("viewer-model-name");
  var buttons = document.getElementById("viewer-model-buttons");
  var scaleSel = document.getElementById("viewer-scale");
  var mapImg = document.getElementById("viewer-map");
  var inputImg = document.getElementById("viewer-input");
  var overlayImg = document.getElementById("viewer-overlay-map");
  var overlayBase = document.getElementById("viewer-overlay-base");
  var opacity = document.getElementById("viewer-opacity");
  var caption = document.getElementById("viewer-caption");

  function option(select, value, text) {
    var o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    select.appendChild(o);
  }
  data.images.forEach(function (img, i) { option(imageSel, String(i), img.label); });
  data.methods.forEach(function (m) { option(methodSel, m, m); });
  slider.min = "0";
  slider.max = String(Math.max(0, data.models.length - 1));
  slider.value = "0";
  data.models.forEach(function (m, i) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = data.model_labels[i];
    b.dataset.index = String(i);
    b.addEventListener("click", function () { slider.value = String(i); show(); });
    buttons.appendChild(b);
  });

  function show() {
    var img = data.images[Number(imageSel.value)];
    var method = methodSel.value;
    var k = Number(slider.value);
    var model = data.models[k];
    var entry = (img.maps[method] || {})[model];
    var scale = scaleSel.value;
    modelName.textContent = data.model_labels[k];
    Array.prototype.forEach.call(buttons.children, function (b) {
      b.classList.toggle("active", Number(b.dataset.index) === k);
    });
    if (img.input) {
      inputImg.src = img.input;
      overlayBase.src = img.input;
    }
    inputImg.hidden = !img.input;
    overlayBase.hidden = !img.input;
    if (entry) {
      mapImg.src = entry[scale];
      overlayImg.src = entry[scale];
      mapImg.hidden = false;
      overlayImg.hidden = !img.input;
      caption.textContent = img.caption + " | " + method + " | " + data.model_labels[k] +
        " predicts " + entry.prediction + (scale === "shared" ? " | shared scale over models" : " | own scale (paper)");
    } else {
      mapImg.hidden = true;
      overlayImg.hidden = true;
      caption.textContent = img.caption + " | no " + method + " map for " + data.model_labels[k];
    }
    overlayImg.style.opacity = String(Number(opacity.value) / 100);
  }
  [imageSel, methodSel, scaleSel].forEach(function (el) { el.addEventListener("change", show); });
  slider.addEventListener("input", show);
  opacity.addEventListener("input", show);
  document.addEventListener("keydown", function (ev) {
    if (ev.target && ev.target.tagName === "SELECT") { return; }
    if (ev.key === "ArrowRight" || ev.key === "ArrowLeft") {
      var k = Number(slider.value) + (ev.key === "ArrowRight" ? 1 : -1);
      if (k >= 0 && k < data.models.length) { slider.value = String(k); show(); }
    }
  });
  show();
})();
