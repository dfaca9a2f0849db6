//! PEFT adapter folders: reading one onto a model, writing a trained one, merging one into the
//! base (`merge_and_unload`).

/// PEFT's adapter settings file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// PEFT's adapter weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
