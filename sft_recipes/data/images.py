"""Images in chat rows: `<image>` placeholders in string content as typed blocks, paths resolved, files checked."""

from __future__ import annotations

import os
from typing import Any

PLACEHOLDER = "<image>"  # LLaMA-Factory's and LLaVA's marker for "the next image of `images` goes here"


def typed_placeholders(messages: Any) -> Any:
    """Messages with `<image>` markers as typed content: "<image>Who?" -> [{"type": "image"}, {"type": "text", ...}].

    Every string content becomes typed, not only the marked ones: TRL inserts all images into a string first user
    turn, on top of the markers, and the processor then counts twice the image tokens it has images.
    """
    if not isinstance(messages, list) or not any(_has_text(m) and PLACEHOLDER in m["content"] for m in messages):
        return messages
    return [{**m, "content": _blocks(m["content"])} if _has_text(m) else m for m in messages]


def placeholder_count(messages: Any, in_tool_messages: bool = False) -> int:
    """The images a conversation asks for: unfilled {"type": "image"} blocks and `<image>` markers in strings, in
    the messages TRL fills with images (every role but "tool"), or in the tool messages only."""
    if not isinstance(messages, list):
        return 0
    count = 0
    for message in messages:
        if not isinstance(message, dict) or (message.get("role") == "tool") != in_tool_messages:
            continue
        content = message.get("content")
        if isinstance(content, str):
            count += content.count(PLACEHOLDER)
        elif isinstance(content, list):
            count += sum(1 for b in content if isinstance(b, dict) and b.get("type") == "image" and "image" not in b)
    return count


def resolve_image(image: Any, base_dir: str | None) -> Any:
    """A relative image path is looked up next to the data file first, then in the working directory; the path
    found is made absolute, so that decoding does not depend on where the process runs later."""
    path = image if isinstance(image, str) else image.get("path") if isinstance(image, dict) else None
    if not path or os.path.isabs(path) or "://" in path:
        return image
    found = next(
        (c for c in (os.path.join(base_dir, path) if base_dir else None, path) if c and os.path.exists(c)), None
    )
    if found is None:
        return image
    found = os.path.abspath(found)
    return found if isinstance(image, str) else {**image, "path": found}


def image_issues(row: dict, messages: Any, base_dir: str | None) -> list[str]:
    """What is wrong with a row's images: not a list, unreadable files, or not as many as its placeholders."""
    if "images" not in row and "image" not in row:
        return []
    images = row["images"] if "images" in row else [row["image"]]
    if images is None:
        images = []
    if not isinstance(images, list):
        return [f"images is {type(images).__name__}, expected a list"]
    issues = [f"images[{i}] {msg}" for i, img in enumerate(images) if (msg := _image_issue(img, base_dir))]
    placeholders = placeholder_count(messages)
    if placeholder_count(messages, in_tool_messages=True):
        issues.append("a tool message holds an image placeholder, and TRL fills only user, assistant and system turns")
    elif placeholders and placeholders != len(images):  # with none, TRL puts every image before the first user turn
        issues.append(
            f"{len(images)} images but {placeholders} image placeholders in the messages: the processor needs "
            f"exactly one image per placeholder (an image block or a {PLACEHOLDER} marker in the text)"
        )
    return issues


def _has_text(message: Any) -> bool:
    return isinstance(message, dict) and isinstance(message.get("content"), str)


def _blocks(content: str) -> list[dict]:
    blocks: list[dict] = []
    for i, text in enumerate(content.split(PLACEHOLDER)):
        if i:
            blocks.append({"type": "image"})
        if text:
            blocks.append({"type": "text", "text": text})
    return blocks


def _image_issue(image: Any, base_dir: str | None) -> str:
    from io import BytesIO

    try:
        from PIL import Image
    except ImportError:
        return "cannot be checked: pillow is not installed (pip install 'sft-recipes[vision]')"
    if isinstance(image, dict) and image.get("bytes"):
        source: Any = BytesIO(image["bytes"])
    else:
        path = resolve_image(image, base_dir)
        path = path.get("path") if isinstance(path, dict) else path
        if not isinstance(path, str):
            return f"is {type(image).__name__}, expected a path or image bytes"
        if "://" in path:
            return ""  # remote: cannot be checked offline, the image processor fetches it
        if not os.path.isfile(path):
            if os.path.isabs(path):
                return f"not found: {path}"
            beside = f"next to the data file in {base_dir}, then " if base_dir else ""
            return f"not found: {path} (looked {beside}in the working directory {os.getcwd()})"
        source = path
    try:
        with Image.open(source) as img:
            img.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises several types for a bad image
        return f"is not a readable image: {e}"
    return ""
