"""What the flows show in the Prefect UI beyond tables: images embedded in Markdown artifacts."""

from __future__ import annotations

import base64
import re
from pathlib import Path


def inline_images(markdown: str, folder: Path) -> str:
    """Markdown with its local PNG links embedded as data URIs: the Prefect UI cannot read the run's disk."""
    def embed(match: re.Match) -> str:
        path = folder / match[2]
        if not path.is_file():
            return match[0]
        return f"![{match[1]}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

    return re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", embed, markdown)
