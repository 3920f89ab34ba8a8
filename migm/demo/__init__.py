"""The demo page (`migm-demo`, extra `migm[demo]`): a Gradio app over the runtime, at the level of
evaluation and serving (it may use the runtime and the speed harness)."""
