"""The cloud provider's side of CoGenesis: a public training recipe that makes the cloud the stronger writer.

The cloud may train on anything public, never on the federation's users. ``public_corpus`` draws a
synthetic corpus of writing tasks from generated users disjoint from the federation, with targets that
teach structure, tone and format without private facts; ``train_public`` fine-tunes a LoRA of the cloud
model on it and exports a small fp16 artifact; ``artifact`` finds the committed artifact and checks its
digests (REPORT.md in this folder: the command that made it and what it measured).
"""
