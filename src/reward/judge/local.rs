//! A judge that runs a Qwen2 checkpoint (the recipe uses Qwen2.5-1.5B-Instruct) through longrl's own
//! rollout engine, greedily, on any longrl device.

use crate::model::ModelBackend;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Judge, JudgeOutcome, JudgeQuery, JUDGE_SYSTEM_PROMPT};
use crate::error::{Error, Result};
use crate::generate::{stop_token_ids, Engine, EngineOptions, GenerateRequest, SamplingParams};
use crate::model::{load_model, Qwen2ForCausalLM};
use crate::tokenizer::{Message, Tokenizer};

/// Settings of a [`LocalJudge`].
#[derive(Debug, Clone)]
pub struct LocalJudgeConfig {
    /// Most tokens of a verdict (explanation + `[[YES]]`/`[[NO]]`); a cut reply is `Unparsed`.
    pub max_new_tokens: usize,
    /// Queries decoded together in one engine call.
    pub batch_size: usize,
    /// Prompt columns prefilled per forward pass.
    pub prefill_chunk: usize,
}

impl Default for LocalJudgeConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 512,
            batch_size: 32,
            prefill_chunk: 2048,
        }
    }
}

/// A judge model held on one device. Calls from several threads take turns on the model.
pub struct LocalJudge<B: ModelBackend> {
    model: Mutex<Qwen2ForCausalLM<B>>,
    tokenizer: Tokenizer,
    device: B::Device,
    stop: Vec<u32>,
    pad: u32,
    dir: PathBuf,
    config: LocalJudgeConfig,
}

impl<B: ModelBackend> LocalJudge<B> {
    /// Loads the judge from a HuggingFace model folder (weights, tokenizer with a chat template).
    pub fn load(
        dir: impl AsRef<Path>,
        device: B::Device,
        config: LocalJudgeConfig,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let model = load_model::<B>(dir, &device)?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        tokenizer.check_fits(model.config().vocab_size)?;
        // The judge is prompted through its chat template: none is an error now, not per query.
        tokenizer.template()?;
        let stop = stop_token_ids(dir, model.config(), Some(&tokenizer))?;
        if stop.is_empty() {
            return Err(Error::config(
                dir.join("config.json"),
                "the judge model declares no eos_token_id: its replies would never stop",
            ));
        }
        let pad = tokenizer.pad_token_id.unwrap_or(stop[0]);
        Ok(Self {
            model: Mutex::new(model),
            tokenizer,
            device,
            stop,
            pad,
            dir: dir.to_path_buf(),
            config,
        })
    }

    fn run(&self, queries: &[JudgeQuery]) -> Result<Vec<String>> {
        let model = self
            .model
            .lock()
            .map_err(|_| Error::Invalid("the local judge panicked in an earlier call".into()))?;
        let engine = Engine::new(
            &model,
            self.device.clone(),
            EngineOptions {
                pad_token_id: self.pad,
                prefill_chunk: self.config.prefill_chunk,
                max_cache_bytes: None,
                shapes: crate::shapes::Shapes::auto::<B>(),
                max_prompt_len: None,
            },
        )
        .with_detokenizer(Box::new(|ids: &[u32]| self.tokenizer.decode(ids, true)));
        let params = SamplingParams {
            max_new_tokens: self.config.max_new_tokens,
            stop_token_ids: self.stop.clone(),
            ..SamplingParams::greedy(self.config.max_new_tokens)
        };
        let mut replies = Vec::with_capacity(queries.len());
        for chunk in queries.chunks(self.config.batch_size.max(1)) {
            let mut requests = Vec::with_capacity(chunk.len());
            for q in chunk {
                let messages = [
                    Message::new("system", JUDGE_SYSTEM_PROMPT),
                    Message::new("user", q.user_prompt()),
                ];
                requests.push(GenerateRequest {
                    prompt: self.tokenizer.encode_chat(&messages, true)?,
                    seeds: vec![0],
                });
            }
            for samples in engine.generate(&requests, &params)? {
                replies.push(
                    samples
                        .into_iter()
                        .next()
                        .and_then(|s| s.text)
                        .unwrap_or_default(),
                );
            }
        }
        Ok(replies)
    }
}

impl<B: ModelBackend> Judge for LocalJudge<B> {
    fn judge(&self, queries: &[JudgeQuery]) -> Vec<JudgeOutcome> {
        match self.run(queries) {
            Ok(replies) => replies
                .iter()
                .map(|r| JudgeOutcome::from_reply(r))
                .collect(),
            Err(e) => {
                log::warn!("local judge {}: {e}", self.dir.display());
                queries
                    .iter()
                    .map(|_| JudgeOutcome::failed(e.to_string()))
                    .collect()
            }
        }
    }

    fn describe(&self) -> String {
        format!("local judge {}", self.dir.display())
    }
}
