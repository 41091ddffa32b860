"""Publishing a verified dataset version folder to a Hugging Face Hub dataset repo."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import huggingface_hub

from kb.dataset_verify import verify
from kb.errors import KbError


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Upload a verified dataset version folder to the Hub dataset repo REPO_ID (created if needed).

    Needs a token (`hf auth login`, or HF_TOKEN); HF_ENDPOINT (read now, not at import) points it at
    another Hub-compatible server.
    """
    folder = Path(folder)
    checked = verify(None, folder)
    token = token or huggingface_hub.get_token()
    if not token:
        raise KbError(
            "no Hugging Face token: run `hf auth login` or set HF_TOKEN, then "
            f"`reasonflux datasets push {folder} {repo_id}`"
        )
    api = huggingface_hub.HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="dataset",
            commit_message=f"reasonflux dataset version {checked['id']}",
        )
    except (huggingface_hub.errors.HfHubHTTPError, OSError, ValueError) as e:
        raise KbError(f"pushing {folder} to {repo_id} failed: {e}") from None
    return {"id": checked["id"], "repo": repo_id, "commit": commit.oid, "url": commit.commit_url}
