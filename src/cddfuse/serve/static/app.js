// cddfuse serve page: plain JavaScript, no build step.
"use strict";
(function () {
  const LABELS = {
    ivf: ["Infrared", "Visible"],
    mif: ["CT / PET / SPECT", "MRI"],
  };
  const $ = (id) => document.getElementById(id);
  const form = $("fuse-form");
  const button = $("fuse-button");
  const progress = $("progress");
  const errorBox = $("error");
  const slider = $("slider");
  const urls = { a: null, b: null, fused: null };
  let token = sessionStorage.getItem("cddfuse-token") || "";
  let serverTask = null;

  function setLabels(task) {
    const [a, b] = LABELS[task] || LABELS.ivf;
    $("label-a").textContent = a;
    $("label-b").textContent = b;
    $("cap-a").textContent = a;
    $("cap-b").textContent = b;
    $("img-a").alt = a + " source";
    $("img-b").alt = b + " source";
    $("compare-with").options[0].textContent = b;
    $("compare-with").options[1].textContent = a;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function setBusy(busy) {
    button.disabled = busy;
    progress.hidden = !busy;
    form.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function replaceUrl(key, blob) {
    if (urls[key]) URL.revokeObjectURL(urls[key]);
    urls[key] = URL.createObjectURL(blob);
    return urls[key];
  }

  function updateSlider() {
    $("compare-clip").style.width = slider.value + "%";
    slider.setAttribute("aria-valuetext", slider.value + "% fused");
  }

  function updateCompare() {
    const which = $("compare-with").value;
    $("compare-base").src = urls[which] || "";
    $("compare-top").src = urls.fused || "";
    sizeTop();
  }

  function sizeTop() {
    // the clipped result keeps the full width of the frame, so it lines up with the source below
    $("compare-top").style.width = $("compare").clientWidth + "px";
  }

  async function loadHealth() {
    try {
      const r = await fetch("/api/health");
      const h = await r.json();
      serverTask = h.task;
      const select = $("task");
      for (const opt of select.options) {
        opt.disabled = opt.value !== h.task;
        if (opt.disabled) opt.textContent += " — not loaded on this server";
      }
      select.value = h.task;
      setLabels(h.task);
      const methods = h.methods || ["cddfuse"];
      const method = $("method");
      for (const opt of method.options) {
        opt.disabled = !methods.includes(opt.value);
        if (opt.disabled) opt.textContent += " — not loaded on this server";
      }
      method.value = methods[0];
      if (h.auth) $("token-field").hidden = false;
      $("token").value = token;
    } catch (e) {
      showError("The server does not answer: " + e);
    }
  }

  async function fuse(event) {
    event.preventDefault();
    errorBox.hidden = true;
    $("img-fused").dataset.ready = "";
    const fa = $("file-a").files[0];
    const fb = $("file-b").files[0];
    if (!fa || !fb) {
      showError("Choose two images first.");
      (fa ? $("file-b") : $("file-a")).focus();
      return;
    }
    const data = new FormData();
    data.append("a", fa);
    data.append("b", fb);
    data.append("task", $("task").value);
    data.append("method", $("method").value);
    data.append("color", $("color").value);
    data.append("normalize", $("normalize").value);
    data.append("resize", $("resize").checked ? "true" : "false");
    data.append("format", "png");
    if (!$("token-field").hidden) {
      token = $("token").value;
      sessionStorage.setItem("cddfuse-token", token);
    }
    const headers = token ? { Authorization: "Bearer " + token } : {};
    setBusy(true);
    try {
      const r = await fetch("/api/fuse", { method: "POST", body: data, headers });
      if (!r.ok) {
        let message = "HTTP " + r.status;
        try {
          const body = await r.json();
          message = body.error || message;
        } catch (e) { /* not JSON */ }
        if (r.status === 401) {
          $("token-field").hidden = false;
          $("token").focus();
          message += " — enter the access token and press Fuse again.";
        } else if (r.status === 503) {
          message += " (retry in " + (r.headers.get("Retry-After") || "a few") + " s)";
        }
        showError(message);
        return;
      }
      const blob = await r.blob();
      $("img-a").src = replaceUrl("a", fa);
      $("img-b").src = replaceUrl("b", fb);
      const fusedUrl = replaceUrl("fused", blob);
      const img = $("img-fused");
      const loaded = new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; });
      img.src = fusedUrl;
      const link = $("download");
      link.href = fusedUrl;
      link.download = (fa.name.replace(/\.[^.]*$/, "") || "fused") + "-fused.png";
      $("results").hidden = false;
      updateCompare();
      updateSlider();
      await loaded;
      img.dataset.ready = "true";
      sizeTop();
    } catch (e) {
      showError("The request failed: " + e);
    } finally {
      setBusy(false);
    }
  }

  $("task").addEventListener("change", () => setLabels($("task").value));
  $("compare-with").addEventListener("change", updateCompare);
  slider.addEventListener("input", updateSlider);
  window.addEventListener("resize", sizeTop);
  form.addEventListener("submit", fuse);
  ["file-a", "file-b"].forEach((id) => $(id).addEventListener("change", () => { errorBox.hidden = true; }));
  updateSlider();
  loadHealth();
})();
