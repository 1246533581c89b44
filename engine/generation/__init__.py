"""The generation scenario for decoder-only Hugging Face models: time to first token, time per output token,
tokens per second, perplexity and next-token agreement against fp32.

Modules: `settings` (the scenario's typed settings and plan, standard library only), `intake` (what makes a
model generative), `prompts` (token ids from the bundled texts), `fidelity` (perplexity, agreement), `cell` (the
cell and reference jobs), `demo` (the offline demo decoder), `charts` and `table` (what the pages and the CLI
show). Timing lives in engine/measure/generation.py.

Hook for the serving step (streaming OpenAI-compatible server, Gradio chat, serve-bench of generative cells):
`engine.generation.cell.load_generator` returns the variant's model and tokenizer as a cell measured them.
"""
