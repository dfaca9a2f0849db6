//! The two things `longrl eval` can measure: a Qwen2 checkpoint run by longrl's rollout engine
//! ([`LocalResponder`]) and a model behind an OpenAI-compatible server ([`EndpointResponder`],
//! e.g. a vLLM-served checkpoint), given identical user messages.

use crate::model::ModelBackend;
use serde_json::json;

use crate::data::prompt_ids;
use crate::error::Result;
use crate::generate::{Engine, GenerateRequest, SamplingParams};
use crate::openai::ChatClient;
use crate::tokenizer::Tokenizer;

use super::harness::{GenJob, GenOutput, Responder};

/// Answers with a model loaded by longrl: the user message through the tokenizer's chat template,
/// then the engine (one shared prefill per item for its `n` answers).
pub struct LocalResponder<'a, B: ModelBackend> {
    engine: Engine<'a, B>,
    tokenizer: &'a Tokenizer,
    params: SamplingParams,
    name: String,
}

impl<'a, B: ModelBackend> LocalResponder<'a, B> {
    /// A responder over `engine` (which should decode with `tokenizer`), sampling with `params`;
    /// `name` describes the model in the summary.
    pub fn new(
        engine: Engine<'a, B>,
        tokenizer: &'a Tokenizer,
        params: SamplingParams,
        name: String,
    ) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            engine,
            tokenizer,
            params,
            name,
        })
    }
}

impl<B: ModelBackend> Responder for LocalResponder<'_, B> {
    fn respond(
        &mut self,
        jobs: &[GenJob],
    ) -> Result<Vec<Vec<std::result::Result<GenOutput, String>>>> {
        let requests: Vec<GenerateRequest> = jobs
            .iter()
            .map(|j| {
                Ok(GenerateRequest {
                    prompt: prompt_ids(self.tokenizer, &j.prompt)?,
                    seeds: j.seeds.clone(),
                })
            })
            .collect::<Result<_>>()?;
        let results = self.engine.generate(&requests, &self.params)?;
        Ok(results
            .into_iter()
            .map(|samples| {
                samples
                    .into_iter()
                    .map(|s| {
                        let reason = serde_json::to_value(s.finish_reason)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default();
                        Ok(GenOutput {
                            text: s.text.unwrap_or_default(),
                            output_tokens: Some(s.output_ids.len()),
                            finish_reason: reason,
                        })
                    })
                    .collect()
            })
            .collect())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// Sampling settings sent to a served model.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSampling {
    /// Temperature.
    pub temperature: f32,
    /// Nucleus mass.
    pub top_p: f32,
    /// `max_tokens` of each request.
    pub max_new_tokens: usize,
}

/// Answers with a served model: one chat-completions request per answer, many in flight at once
/// (the client's concurrency bound), each carrying its seed (vLLM and SGLang honour it).
pub struct EndpointResponder {
    client: ChatClient,
    model: String,
    sampling: EndpointSampling,
}

impl EndpointResponder {
    /// A responder asking `model` through `client`.
    pub fn new(client: ChatClient, model: String, sampling: EndpointSampling) -> Self {
        Self {
            client,
            model,
            sampling,
        }
    }
}

impl Responder for EndpointResponder {
    fn respond(
        &mut self,
        jobs: &[GenJob],
    ) -> Result<Vec<Vec<std::result::Result<GenOutput, String>>>> {
        let flat: Vec<(usize, u64)> = jobs
            .iter()
            .enumerate()
            .flat_map(|(i, j)| j.seeds.iter().map(move |&s| (i, s)))
            .collect();
        let answers = self.client.run_all(
            &flat,
            |k, &(i, seed)| {
                let body = json!({
                    "model": self.model,
                    "messages": [{"role": "user", "content": jobs[i].prompt}],
                    "temperature": self.sampling.temperature,
                    "top_p": self.sampling.top_p,
                    "max_tokens": self.sampling.max_new_tokens,
                    "seed": seed,
                    "n": 1,
                });
                self.client
                    .complete(&format!("eval request {k}"), &body)
                    .map(|reply| GenOutput {
                        text: reply.content,
                        output_tokens: reply.completion_tokens,
                        finish_reason: reply.finish_reason.unwrap_or_else(|| "stop".into()),
                    })
            },
            |_| Err("worker thread panicked".to_string()),
        );
        let mut out: Vec<Vec<_>> = jobs.iter().map(|_| Vec::new()).collect();
        for ((i, _), a) in flat.iter().zip(answers) {
            out[*i].push(a);
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("{} at {}", self.model, self.client.endpoint())
    }
}
