//! All integration tests in one binary: one link of the library (with every backend compiled in)
//! instead of one per file, which keeps CI builds fast and the target folder small.

mod common;

mod ablation;
mod chat_templates;
mod checkpoint;
mod cli;
mod distributed;
mod eval;
mod generate;
mod judge_http;
mod lora;
mod parity;
mod parquet_data;
mod pipeline;
mod plot;
mod qwen3;
mod recovery;
mod reward;
mod rl;
mod rl_loss;
mod rope;
mod sft;
mod shapes;
mod synthetic;
mod tokenizer;
