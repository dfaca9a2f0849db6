//! Load a HuggingFace Qwen2-family checkpoint (safetensors + tokenizer.json), score a text and
//! generate a chat answer: the first thing to try with a real model.
//!
//! ```text
//! cargo run --release --example from_checkpoint -- /path/to/Qwen2.5-0.5B-Instruct "What is 2+2?"
//! cargo run --release --features cuda --example from_checkpoint -- DIR "question" cuda
//! ```
//! Without arguments it uses the shipped tiny model.

use std::path::PathBuf;

use longrl::device::BackendFn;
use longrl::generate::{stop_token_ids, Engine, EngineOptions, GenerateRequest, SamplingParams};
use longrl::model::load_model;
use longrl::tokenizer::{Message, Tokenizer};
use longrl::DeviceSpec;

struct Demo {
    dir: PathBuf,
    question: String,
}

impl BackendFn for Demo {
    type Output = anyhow::Result<(Vec<f32>, String)>;

    fn call<B: longrl::model::ModelBackend>(self, device: B::Device) -> Self::Output {
        let model = load_model::<B>(&self.dir, &device)?;
        let tok = Tokenizer::from_dir(&self.dir)?;
        tok.check_fits(model.config().vocab_size)?;
        let ids = tok.encode(&self.question, true)?;
        let logprobs = model.sequence_logprobs(&ids, 1024, &device)?;
        let prompt = tok.encode_chat(&[Message::new("user", self.question.clone())], true)?;
        let stop = stop_token_ids(&self.dir, model.config(), Some(&tok))?;
        let engine = Engine::new(&model, device, EngineOptions::default())
            .with_detokenizer(Box::new(|ids: &[u32]| tok.decode(ids, true)));
        let out = engine.generate(
            &[GenerateRequest {
                prompt,
                seeds: vec![0],
            }],
            &SamplingParams {
                stop_token_ids: stop,
                ..SamplingParams::greedy(32)
            },
        )?;
        let text = out[0][0].text.clone().unwrap_or_default();
        Ok((logprobs, text))
    }
}

fn run(args: &[String]) -> anyhow::Result<(Vec<f32>, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models/tiny-qwen2-chatml"));
    let question = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "What is two plus two?".into());
    let device: DeviceSpec = match args.get(2) {
        Some(d) => d.parse()?,
        None => DeviceSpec::Flex,
    };
    device.run(Demo { dir, question })?
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (logprobs, text) = run(&args)?;
    let total: f32 = logprobs.iter().sum();
    println!(
        "log p(question) = {total:.3} over {} tokens",
        logprobs.len() + 1
    );
    println!("answer: {text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_the_tiny_model() {
        let (logprobs, _) = super::run(&[]).unwrap();
        assert!(!logprobs.is_empty() && logprobs.iter().all(|x| x.is_finite() && *x <= 0.0));
    }
}
