// The page's only script: fills the form's choices from /api/info, posts the form to /api/predict and shows
// the answer. Text goes through textContent only, never innerHTML.
"use strict";

const $ = (id) => document.getElementById(id);

function option(select, value) {
  const item = document.createElement("option");
  item.value = value;
  item.textContent = value;
  select.appendChild(item);
}

async function loadInfo() {
  try {
    const response = await fetch("/api/info");
    const info = await response.json();
    info.sexes.forEach((value) => option($("sex"), value));
    info.sites.forEach((value) => option($("site"), value));
    const metadata = info.uses_metadata ? "uses age, sex and site" : "ignores age, sex and site (image only)";
    const points = info.operating_point_source
      ? `Operating points: ${info.operating_point_source}.`
      : "No calibrated operating point is available (the run has no evaluate results).";
    $("model-info").textContent =
      `Model: ${info.model} at ${info.image_size} px; ${metadata}. ${points} ` +
      `Uploads up to ${(info.max_upload_bytes / 2 ** 20).toFixed(0)} MiB.`;
  } catch (error) {
    $("model-info").textContent = `Could not load the model's details (${error}).`;
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function showResult(result, file) {
  const probability = result.probability;
  $("probability").textContent = `${probability.toFixed(3)} (${(probability * 100).toFixed(1)}%)`;
  const meaning = result.operating_point;
  $("operating-summary").textContent = meaning.summary;
  const list = $("operating-points");
  list.replaceChildren();
  meaning.points.forEach((point) => {
    const item = document.createElement("li");
    item.textContent = point.text;
    item.className = point.above ? "above" : "below";
    list.appendChild(item);
  });
  $("operating-source").textContent = meaning.source ? `Source: ${meaning.source}.` : "";
  const original = $("original");
  if (original.src.startsWith("blob:")) URL.revokeObjectURL(original.src);
  original.src = URL.createObjectURL(file);
  if (result.heatmap) $("heatmap").src = result.heatmap;
  $("heatmap-empty").hidden = !result.heatmap_empty;
  $("result").hidden = false;
}

async function submit(event) {
  event.preventDefault();
  $("error").hidden = true;
  const file = $("image").files[0];
  if (!file) {
    showError("Choose an image first.");
    return;
  }
  const form = new FormData();
  form.append("image", file);
  for (const field of ["age", "sex", "site"]) {
    const value = $(field).value.trim();
    if (value !== "") form.append(field, value);
  }
  $("submit").disabled = true;
  $("busy").hidden = false;
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    const body = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
    if (!response.ok) {
      showError(`Not scored: ${body.detail}`);
      $("result").hidden = true;
    } else {
      showResult(body, file);
    }
  } catch (error) {
    showError(`The server did not answer (${error}).`);
  } finally {
    $("submit").disabled = false;
    $("busy").hidden = true;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  loadInfo();
  $("form").addEventListener("submit", submit);
});
