// The message box under the header: failed requests with the server's detail and a hint, and
// values the page rejected before sending anything.

const errorBox = () => document.getElementById("error");

// Why a request failed and what the user can do, by HTTP status. Status 0 is a network failure.
const ERROR_TEXT = {
  0: ["the service did not respond", "Check that the service is running, then try again."],
  401: ["the API key is missing or not valid", "Enter a valid key in the API key field and press Use key."],
  403: ["this API key is read-only", "Adding crops needs a write key. Enter one in the API key field."],
  404: ["the item was not found", "It may have been deleted. Run the description search again."],
  409: ["the gallery was built with another model", "Reindex the gallery with this model, or serve the gallery's model."],
  413: ["the request is too large", "Send fewer or smaller files, or a shorter description."],
  415: ["the file type is not supported", "Send the crop as a JPEG or PNG file."],
  422: ["the request is invalid", "Correct the value named above and try again."],
  503: ["the service is not ready", "The model or gallery is still loading. Try again in a moment."],
};

// 503 with any code but not_ready means loading failed for good, so waiting does not help.
const LOAD_FAILED_TEXT = [
  "the service failed to load",
  "The detail above names the cause. The service must be fixed and restarted.",
];

// Show a failed request: what failed and why, the server's detail, and what to do next.
export function showError(action, error) {
  const loadFailed = error.status === 503 && error.code !== "not_ready";
  const [reason, hint] = (loadFailed ? LOAD_FAILED_TEXT : ERROR_TEXT[error.status]) || [
    `the service returned HTTP ${error.status}`,
    "Try again, and if it fails again, check the service log.",
  ];
  const title = `${action} failed: ${reason}` + (error.status ? ` (HTTP ${error.status}).` : ".");
  const detail = error.detail ? `Server: ${error.detail}` : "";
  showMessage(String(error.status), title, detail, hint);
}

// Show a value the page rejected before sending anything, such as a time range that ends before it starts.
export function showInputError(action, message) {
  showMessage("input", `${action} not sent: a field is invalid.`, message, "Correct it and try again.");
}

function showMessage(status, title, detail, hint) {
  const box = errorBox();
  const heading = document.createElement("strong");
  heading.textContent = title;
  box.replaceChildren(heading);

  if (detail) {
    const detailLine = document.createElement("span");
    detailLine.className = "detail";
    detailLine.textContent = detail;
    box.append(detailLine);
  }
  const hintLine = document.createElement("span");
  hintLine.textContent = hint;
  box.append(hintLine);

  box.dataset.status = status;
  box.hidden = false;
}

export function clearError() {
  const box = errorBox();
  box.hidden = true;
  box.replaceChildren();
  delete box.dataset.status;
}
