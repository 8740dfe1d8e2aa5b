//! LoRA adapters in the format Hugging Face PEFT reads and writes. Filled by the LoRA issue.
