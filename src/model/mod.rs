//! The Qwen2 model family: configuration, layers, rotary embeddings, KV cache and checkpoint I/O.

pub mod attention;
pub mod backend;
pub mod cache;
pub mod checkpoint;
pub mod config;
#[cfg(feature = "flex")]
mod flex;
pub mod head;
pub mod norm;
pub mod qwen2;
pub mod recompute;
pub mod rope;
pub mod swiglu;

pub use backend::{ModelBackend, TrainBackend};
pub use cache::KvCache;
pub use checkpoint::{load_model, save_model, SaveDtype};
pub use config::{Qwen2Config, RopeScaling};
pub use head::HeadLayout;
pub use qwen2::{Qwen2ForCausalLM, DEFAULT_LOGITS_CHUNK};
pub use rope::RopeParams;
