"""Training data for speculative-decoding drafts: load chat data from files, bundled assets or the
Hugging Face Hub into one conversation format (``sources``), let the frozen target regenerate
the assistant answers with a resumable on-disk cache (``distill``), apply the target's chat
template with a loss mask on assistant tokens (``chat``), and batch and split the result for
training (``batching``)."""
