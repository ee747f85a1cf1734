// dermalens web app: upload an image, show the class probabilities and explanations.
// Plain JavaScript served by the app itself: nothing is loaded from the internet.
"use strict";

(function () {
  const config = JSON.parse(document.getElementById("config").textContent);
  const $ = (id) => document.getElementById(id);
  const input = $("file-input");
  const dropzone = $("dropzone");
  let currentFile = null;
  let generation = 0;          // ignores answers for an image that was replaced meanwhile
  const objectUrls = {};

  function setImage(slot, img, blob) {
    if (objectUrls[slot]) URL.revokeObjectURL(objectUrls[slot]);
    objectUrls[slot] = blob ? URL.createObjectURL(blob) : "";
    img.src = objectUrls[slot];
  }

  function showError(element, message) {
    element.textContent = message;
    element.hidden = !message;
  }

  function percent(p) {
    return (100 * p).toFixed(p >= 0.995 || p < 0.0005 ? 0 : 1) + "%";
  }

  async function errorMessage(response) {
    // The API answers every error as JSON {"error": "..."}; anything else is reported as is.
    let message = "the server answered " + response.status + " " + response.statusText;
    try {
      const body = await response.json();
      if (body && body.error) message = body.error;
    } catch (ignored) { /* not JSON */ }
    const retry = response.headers.get("Retry-After");   // 503 (busy) and 504 (time limit)
    if (retry) message += " (try again in " + retry + " s)";
    return message;
  }

  function renderBars(result) {
    // One row per class, most probable first: "code  name ... value" over a full-width bar.
    const bars = $("bars");
    bars.replaceChildren();
    result.top_k.forEach((item, rank) => {
      const row = document.createElement("li");
      row.className = "bar-row" + (rank === 0 ? " top" : "");
      row.dataset.class = item.class;
      row.dataset.probability = String(item.probability);
      const label = document.createElement("span");
      label.className = "bar-label";
      const code = document.createElement("span");
      code.className = "bar-code";
      code.textContent = item.class;
      const name = document.createElement("span");
      name.className = "bar-name";
      name.textContent = item.name;
      label.append(code, name);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = percent(item.probability);
      const track = document.createElement("span");
      track.className = "bar-track";
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = Math.max(0, Math.min(100, 100 * item.probability)).toFixed(2) + "%";
      track.append(fill);
      row.append(label, value, track);
      bars.append(row);
    });
    const top = $("top-class");
    top.replaceChildren("Most probable: ");
    const strong = document.createElement("strong");
    strong.textContent = result.top_class_name + " (" + result.top_class + ", " + percent(result.top_k[0].probability) + ")";
    top.append(strong);
    // The model's decision rule (fitted class biases, melanoma operating point) may pick another class.
    const decision = $("decision");
    const ruled = result.decision_rule && result.decision_rule !== "raw argmax";
    decision.hidden = !ruled;
    if (ruled) {
      let text = "Decision rule (" + result.decision_rule + "): " + result.predicted_class_name + " (" +
        result.predicted_class + ").";
      if (result.melanoma_flag !== null && result.melanoma_flag !== undefined) {
        text += " Melanoma flag " + (result.melanoma_flag ? "RAISED" : "not raised") + " at the model's operating point.";
      }
      decision.textContent = text;
      decision.dataset.class = result.predicted_class;
    }
    // Why this answer is unreliable (an image far smaller than the model's input), as `dermalens predict` says it.
    $("caution").hidden = !result.caution;
    $("caution").textContent = result.caution ? "Caution: " + result.caution : "";
  }

  const methods = config.explainMethods;           // [{name, label, slot}], empty when explanations are off
  const byName = Object.fromEntries(methods.map((m) => [m.name, m]));

  function setExplainButtons(enabled) {
    for (const m of methods) $(m.slot + "-button").disabled = !enabled;
    if ($("report-button")) $("report-button").disabled = !enabled;
  }

  function resetResults() {
    $("bars").replaceChildren();
    $("top-class").textContent = "Upload an image to see the model's probabilities for each class.";
    $("decision").hidden = true;
    $("caution").hidden = true;
    for (const m of methods) {
      $(m.slot + "-figure").hidden = true;
    }
    showError($("error"), "");
    showError($("explain-error"), "");
    setExplainButtons(false);
  }

  // As the server's %g: "2.5", "0.25", "10" (toFixed(0) showed a 2.5-MB limit as 3 and 0.25 as 0).
  function megabytes(bytes) {
    return String(Number((bytes / 1048576).toPrecision(6)));
  }

  async function analyse(file) {
    const mine = ++generation;
    currentFile = null;
    resetResults();
    if (!file) return;
    if (file.size > config.maxUploadBytes) {
      showError($("error"), "upload too large: '" + file.name + "' is " + (file.size / 1048576).toFixed(1) +
        " MB, the limit is " + megabytes(config.maxUploadBytes) + " MB");
      return;
    }
    $("preview-figure").hidden = false;
    $("preview-caption").textContent = file.name;
    setImage("preview", $("preview"), file);
    $("status").textContent = "Classifying " + file.name + " ...";
    const form = new FormData();
    form.append("image", file, file.name);
    let response;
    try {
      response = await fetch("api/predict", { method: "POST", body: form });
    } catch (error) {
      if (mine === generation) showError($("error"), "cannot reach the server: " + error.message);
      $("status").textContent = "";
      return;
    }
    if (mine !== generation) return;
    $("status").textContent = "";
    if (!response.ok) {
      $("preview-figure").hidden = true;
      showError($("error"), await errorMessage(response));
      return;
    }
    const result = await response.json();
    if (mine !== generation) return;
    $("preview-caption").textContent = result.image + " (" + result.image_size.join(" x ") + " px)";
    renderBars(result);
    currentFile = file;
    setExplainButtons(true);
    if (byName.gradcam) explain("gradcam");
  }

  function explainForm(method) {
    const form = new FormData();
    form.append("image", currentFile, currentFile.name);
    form.append("method", method);
    const target = $("target-class").value;
    if (target) form.append("class", target);
    return form;
  }

  async function explain(method) {
    if (!currentFile) return;
    const mine = generation;
    const m = byName[method];
    const button = $(m.slot + "-button");
    const target = $("target-class").value;
    showError($("explain-error"), "");
    button.disabled = true;
    $("status").textContent = "Computing " + m.label + (method === "shap" ? " (this can take a while)" : "") + " ...";
    const form = explainForm(method);
    form.append("format", "png");
    try {
      const response = await fetch("api/explain", { method: "POST", body: form });
      if (mine !== generation) return;
      if (!response.ok) {
        showError($("explain-error"), m.label + ": " + await errorMessage(response));
        return;
      }
      const blob = await response.blob();
      if (mine !== generation) return;
      const explained = response.headers.get("X-Target-Class") || target || "predicted class";
      setImage(m.slot, $(m.slot + "-image"), blob);
      $(m.slot + "-caption").textContent = m.label + " for class " + explained;
      $(m.slot + "-figure").hidden = false;
    } catch (error) {
      if (mine === generation) showError($("explain-error"), m.label + ": cannot reach the server: " + error.message);
    } finally {
      if (mine === generation) {
        button.disabled = false;
        $("status").textContent = "";
      }
    }
  }

  async function downloadReport() {
    // One PNG made by the server: image, probabilities, heatmap and the research-tool note together.
    if (!currentFile) return;
    const mine = generation;
    const method = $("report-method").value;
    const button = $("report-button");
    showError($("explain-error"), "");
    button.disabled = true;
    $("status").textContent = "Preparing the result (" + byName[method].label + ") ...";
    try {
      const response = await fetch("api/report", { method: "POST", body: explainForm(method) });
      if (mine !== generation) return;
      if (!response.ok) {
        showError($("explain-error"), "Download: " + await errorMessage(response));
        return;
      }
      const blob = await response.blob();
      const match = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = match ? match[1] : "dermalens-result.png";
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    } catch (error) {
      if (mine === generation) showError($("explain-error"), "Download: cannot reach the server: " + error.message);
    } finally {
      if (mine === generation) {
        button.disabled = false;
        $("status").textContent = "";
      }
    }
  }

  input.addEventListener("change", () => analyse(input.files[0]));
  for (const m of methods) $(m.slot + "-button").addEventListener("click", () => explain(m.name));
  if ($("report-button")) $("report-button").addEventListener("click", downloadReport);
  $("target-class").addEventListener("change", () => {
    if (currentFile && byName.gradcam) explain("gradcam");
  });
  $("preview").addEventListener("error", () => {
    if ($("preview").getAttribute("src")) {
      $("preview-caption").textContent += " (this browser cannot display the format; the server can read it)";
    }
  });

  for (const name of ["dragenter", "dragover"]) {
    dropzone.addEventListener(name, (event) => { event.preventDefault(); dropzone.classList.add("dragging"); });
  }
  for (const name of ["dragleave", "drop"]) {
    dropzone.addEventListener(name, (event) => { event.preventDefault(); dropzone.classList.remove("dragging"); });
  }
  dropzone.addEventListener("drop", (event) => {
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) analyse(file);
  });
  // A file dropped beside the drop zone must not make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
})();
