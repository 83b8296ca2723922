"""The Gradio demo in pieces: `checks`, `runner`, `handlers`, `ui`, `cli`; imports `core` and `runtime` only."""
