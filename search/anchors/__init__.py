"""ARF anchor preparation (``python -m search.prepare``): retrieval anchors from a FAISS index,
caption anchors from a captioning pipeline."""
