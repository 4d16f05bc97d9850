//! Datasets: JSONL lines to examples (token ids + which tokens are trained).
//!
//! Formats, one JSON object per line (the TRL / MLX-LM conventions):
//! - `{"prompt": "...", "completion": "..."}`: the text is prompt + completion, tokenized
//!   with the tokenizer's special tokens, then EOS; the completion tokens and the EOS are
//!   trained. With [`DataOptions::plain_as_chat`] the pair goes through the chat template
//!   as a user turn and an assistant turn instead (MLX-LM's completions format).
//! - `{"prompt": [messages], "completion": [messages]}` (conversational prompt/completion):
//!   rendered with the chat template; the assistant turns of `completion` are trained.
//! - `{"messages": [{"role", "content"}, ...]}` (optionally `"tools"`): rendered with the
//!   chat template; every assistant turn is trained (or only the last one, with
//!   [`DataOptions::last_turn_only`]).
//! - `{"text": "..."}`: all tokens trained, EOS appended.
//! - pre-tokenized: `{"input_ids": [...], "prompt_len": k}` or `{"input_ids": [...],
//!   "trained": [0/1, ...]}`.
//!
//! An answer's trained tokens are its content and the token that ends it: EOS for plain
//! text, the template's end-of-turn token (`<|im_end|>`, `<|eot_id|>`, ...) for chat.
//! Masks are found from token ids only, never from the tokenizer's offsets (which differ
//! between a `tokenizer.json` and the same tokenizer built from GGUF metadata, e.g. in
//! whether a token's leading or trailing spaces count), so every tokenizer source gives
//! the same masks. A plain prompt/completion follows TRL's `SFTTrainer`: the completion
//! starts where the tokens of the prompt alone and those of prompt + completion diverge
//! (so a token that merges the prompt's end with the completion's start is trained), and a
//! prompt that is not a prefix is counted in [`DataReport::prompt_mismatch`]. For chat,
//! answer spans are found by rendering the conversation up to each assistant turn with and
//! without it; the text before an answer is tokenized alone and the answer's tokens start
//! where those tokens and the conversation's diverge, so the ids are exactly the tokens of
//! the whole rendered conversation.

use std::ops::Range;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tokenize::{Message, Tokenizer};
use crate::train::Example;

pub use crate::error::{DataError, DataErrorKind};

type LineResult<T> = std::result::Result<T, (DataErrorKind, String)>;

fn bad<T>(kind: DataErrorKind, msg: impl Into<String>) -> LineResult<T> {
    Err((kind, msg.into()))
}

/// One parsed line, before tokenization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Text(String),
    PromptCompletion {
        prompt: String,
        completion: String,
    },
    /// A conversation; assistant turns at index >= `trained_from` are answers (0 for
    /// `messages`, the prompt's length for conversational prompt/completion).
    Chat {
        messages: Vec<Message>,
        trained_from: usize,
        tools: Option<Value>,
    },
    Tokenized {
        ids: Vec<u32>,
        trained: Vec<bool>,
    },
}

impl Record {
    pub fn format_name(&self) -> &'static str {
        match self {
            Record::Text(_) => "text",
            Record::PromptCompletion { .. } => "prompt/completion",
            Record::Chat { trained_from: 0, .. } => "messages",
            Record::Chat { .. } => "conversational prompt/completion",
            Record::Tokenized { .. } => "tokenized",
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn text_field(o: &Map<String, Value>, name: &str, kind_if_empty: DataErrorKind) -> LineResult<String> {
    match o.get(name) {
        None | Some(Value::Null) => bad(DataErrorKind::MissingField, format!("missing field `{name}`")),
        Some(Value::String(s)) if s.is_empty() => bad(kind_if_empty, format!("`{name}` is empty")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => bad(DataErrorKind::WrongType, format!("`{name}` must be a string, found {}", type_name(v))),
    }
}

fn parse_messages(v: &Value, field: &str) -> LineResult<Vec<Message>> {
    let Value::Array(list) = v else {
        return bad(DataErrorKind::WrongType, format!("`{field}` must be a list of messages, found {}", type_name(v)));
    };
    if list.is_empty() {
        return bad(DataErrorKind::EmptyField, format!("`{field}` is empty"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let Value::Object(o) = m else {
            return bad(
                DataErrorKind::WrongType,
                format!("`{field}[{i}]` must be an object with `role` and `content`, found {}", type_name(m)),
            );
        };
        let role = match o.get("role") {
            None | Some(Value::Null) => {
                return bad(DataErrorKind::MissingField, format!("`{field}[{i}]` has no `role`"))
            }
            Some(Value::String(s)) => s.clone(),
            Some(v) => {
                return bad(
                    DataErrorKind::WrongType,
                    format!("`{field}[{i}].role` must be a string, found {}", type_name(v)),
                )
            }
        };
        if !matches!(role.as_str(), "system" | "user" | "assistant") {
            return bad(
                DataErrorKind::WrongRole,
                format!("`{field}[{i}].role` is {role:?}: only \"system\", \"user\" and \"assistant\" are supported"),
            );
        }
        let content = match o.get("content") {
            None | Some(Value::Null) => {
                return bad(DataErrorKind::MissingField, format!("`{field}[{i}]` ({role}) has no `content`"))
            }
            Some(Value::String(s)) => s.clone(),
            Some(v) => {
                return bad(
                    DataErrorKind::WrongType,
                    format!("`{field}[{i}].content` must be a string, found {}", type_name(v)),
                )
            }
        };
        if content.is_empty() {
            let kind = if role == "assistant" { DataErrorKind::EmptyAnswer } else { DataErrorKind::EmptyField };
            return bad(kind, format!("`{field}[{i}].content` ({role}) is empty"));
        }
        out.push(Message { role, content });
    }
    Ok(out)
}

/// Roles in order: an optional system message first, then a user message, then any of
/// user/assistant; at least one assistant turn at index >= `trained_from`.
fn check_conversation(msgs: &[Message], trained_from: usize, what: &str) -> LineResult<()> {
    for (i, m) in msgs.iter().enumerate() {
        if m.role == "system" && i > 0 {
            return bad(
                DataErrorKind::WrongRole,
                format!("{what}: a system message may only come first (message {i})"),
            );
        }
    }
    let first = msgs.iter().position(|m| m.role != "system");
    match first {
        Some(i) if msgs[i].role != "user" => {
            return bad(
                DataErrorKind::WrongRole,
                format!(
                    "{what}: the first message after the system prompt must be from the user, found {:?}",
                    msgs[i].role
                ),
            )
        }
        _ => {}
    }
    if !msgs.iter().skip(trained_from).any(|m| m.role == "assistant") {
        return bad(DataErrorKind::NoAssistant, format!("{what}: no assistant turn to learn from"));
    }
    Ok(())
}

/// Parse one JSONL line. `Ok(None)` for a blank line.
pub fn parse_line(line: &str) -> LineResult<Option<Record>> {
    let line = line.trim_start_matches('\u{feff}');
    if line.trim().is_empty() {
        return Ok(None);
    }
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return bad(DataErrorKind::InvalidJson, format!("invalid JSON ({e})")),
    };
    let Value::Object(o) = v else {
        return bad(DataErrorKind::InvalidJson, format!("expected a JSON object, found {}", type_name(&v)));
    };
    if let Some(m) = o.get("messages") {
        let messages = parse_messages(m, "messages")?;
        check_conversation(&messages, 0, "`messages`")?;
        let tools = o.get("tools").filter(|t| !t.is_null()).cloned();
        return Ok(Some(Record::Chat { messages, trained_from: 0, tools }));
    }
    if o.contains_key("prompt") || o.contains_key("completion") {
        let p = o.get("prompt").filter(|p| !p.is_null());
        let c = o.get("completion").filter(|c| !c.is_null());
        let (Some(p), Some(c)) = (p, c) else {
            let missing = if p.is_none() { "prompt" } else { "completion" };
            return bad(
                DataErrorKind::MissingField,
                format!("missing field `{missing}` (a prompt needs a completion)"),
            );
        };
        return match (p, c) {
            (Value::Array(_), Value::Array(_)) => {
                let prompt = parse_messages(p, "prompt")?;
                let completion = parse_messages(c, "completion")?;
                if let Some(m) = completion.iter().find(|m| m.role != "assistant") {
                    return bad(
                        DataErrorKind::WrongRole,
                        format!("`completion` messages must be from the assistant, found {:?}", m.role),
                    );
                }
                if prompt.iter().all(|m| m.role == "system") {
                    return bad(DataErrorKind::WrongRole, "`prompt` needs a user message");
                }
                let trained_from = prompt.len();
                let mut messages = prompt;
                messages.extend(completion);
                check_conversation(&messages, trained_from, "`prompt` + `completion`")?;
                Ok(Some(Record::Chat { messages, trained_from, tools: None }))
            }
            (Value::String(_), Value::String(_)) => {
                let prompt = text_field(&o, "prompt", DataErrorKind::EmptyField)?;
                let completion = text_field(&o, "completion", DataErrorKind::EmptyAnswer)?;
                Ok(Some(Record::PromptCompletion { prompt, completion }))
            }
            (Value::String(_) | Value::Array(_), Value::String(_) | Value::Array(_)) => bad(
                DataErrorKind::WrongType,
                "`prompt` and `completion` must both be strings or both be lists of messages",
            ),
            (Value::String(_) | Value::Array(_), c) => bad(
                DataErrorKind::WrongType,
                format!("`completion` must be a string or a list of messages, found {}", type_name(c)),
            ),
            (p, _) => bad(
                DataErrorKind::WrongType,
                format!("`prompt` must be a string or a list of messages, found {}", type_name(p)),
            ),
        };
    }
    if o.contains_key("text") {
        return Ok(Some(Record::Text(text_field(&o, "text", DataErrorKind::EmptyField)?)));
    }
    if let Some(ids) = o.get("input_ids") {
        return parse_tokenized(&o, ids).map(Some);
    }
    bad(
        DataErrorKind::MissingField,
        "no known format: expected `messages`, `prompt` + `completion`, `text` or `input_ids`",
    )
}

fn parse_tokenized(o: &Map<String, Value>, ids: &Value) -> LineResult<Record> {
    let Value::Array(list) = ids else {
        return bad(
            DataErrorKind::WrongType,
            format!("`input_ids` must be a list of token ids, found {}", type_name(ids)),
        );
    };
    let ids = list
        .iter()
        .map(|x| x.as_u64().filter(|&n| n <= u32::MAX as u64).map(|n| n as u32))
        .collect::<Option<Vec<u32>>>()
        .ok_or((DataErrorKind::WrongType, "`input_ids` must hold non-negative integers".to_owned()))?;
    if ids.is_empty() {
        return bad(DataErrorKind::EmptyField, "`input_ids` is empty");
    }
    let n = ids.len();
    if let Some(p) = o.get("prompt_len") {
        let Some(p) = p.as_u64().filter(|&p| (p as usize) < n) else {
            return bad(DataErrorKind::WrongType, format!("`prompt_len` must be an integer below the token count {n}"));
        };
        let trained = (0..n).map(|i| i >= (p as usize).max(1)).collect();
        return Ok(Record::Tokenized { ids, trained });
    }
    if let Some(t) = o.get("trained") {
        let Value::Array(t) = t else {
            return bad(DataErrorKind::WrongType, format!("`trained` must be a list of 0/1, found {}", type_name(t)));
        };
        if t.len() != n {
            return bad(DataErrorKind::WrongType, format!("`trained` has {} entries for {n} tokens", t.len()));
        }
        let trained = t.iter().map(|x| x.as_u64() == Some(1) || x.as_bool() == Some(true)).collect();
        return Ok(Record::Tokenized { ids, trained });
    }
    let trained = (0..n).map(|i| i >= 1).collect();
    Ok(Record::Tokenized { ids, trained })
}

/// Parse every line of a JSONL text: (1-based line number, record). Blank lines skipped.
pub fn parse_jsonl(file: &str, text: &str) -> Result<Vec<(usize, Record)>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match parse_line(line) {
            Ok(Some(r)) => out.push((i + 1, r)),
            Ok(None) => {}
            Err((kind, message)) => return Err(DataError { file: file.to_owned(), line: i + 1, kind, message }),
        }
    }
    if out.is_empty() {
        return Err(DataError {
            file: file.to_owned(),
            line: 0,
            kind: DataErrorKind::NoExamples,
            message: "no examples".into(),
        });
    }
    Ok(out)
}

/// The pre-tokenized format only (no tokenizer needed). Errors name the file and line.
pub fn parse_tokenized_jsonl(file: &str, text: &str) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (line, r) in parse_jsonl(file, text)? {
        match r {
            Record::Tokenized { ids, trained } => out.push(Example { ids, trained, origin: format!("{file}:{line}") }),
            other => {
                return Err(DataError {
                    file: file.to_owned(),
                    line,
                    kind: DataErrorKind::MissingField,
                    message: format!(
                        "a {} line needs a tokenizer (this reader takes `input_ids` only)",
                        other.format_name()
                    ),
                }
                .into())
            }
        }
    }
    Ok(out)
}

/// How lines become examples.
#[derive(Clone, Debug, Default)]
pub struct DataOptions {
    /// Longest example in tokens (None: no limit). Longer ones lose prompt tokens from
    /// the left first, then answer tokens from the right. At least 2.
    pub max_len: Option<usize>,
    /// For `messages`: train only the last assistant turn.
    pub last_turn_only: bool,
    /// Put plain-string prompt/completion pairs through the chat template (a user turn
    /// and an assistant turn), as MLX-LM does, instead of concatenating them (TRL).
    pub plain_as_chat: bool,
}

/// What happened while building a dataset, for the user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataReport {
    pub examples: usize,
    /// Examples that lost prompt tokens (from the left) to `max_len`.
    pub truncated_prompt: usize,
    /// Examples that also lost answer tokens (from the right), end token included.
    pub truncated_answer: usize,
    /// Origins ("file:line") of the truncated examples, the first few.
    pub truncated_at: Vec<String>,
    pub tokens: usize,
    pub trained_tokens: usize,
    /// Plain prompt/completion examples whose prompt alone tokenizes to something that is
    /// not a prefix of the tokens of prompt + completion (tokens merge across the
    /// boundary): the completion starts where they diverge (TRL's rule), so the model
    /// learns from a context a little different from the prompt it will see alone.
    pub prompt_mismatch: usize,
    /// Origins ("file:line") of those examples, the first few.
    pub prompt_mismatch_at: Vec<String>,
}

impl DataReport {
    /// A warning line when examples were truncated or had a prompt that is not a prefix
    /// of prompt + completion (both joined by "; "), else None.
    pub fn warning(&self) -> Option<String> {
        let mut parts = Vec::new();
        let n = self.truncated_prompt + self.truncated_answer;
        if n > 0 {
            let more = if n > self.truncated_at.len() { ", ..." } else { "" };
            parts.push(format!(
                "{n} of {} examples were longer than the maximum length: {} lost prompt tokens (cut from the left), {} lost answer tokens too (cut from the right, so they do not learn to stop) ({}{more})",
                self.examples,
                self.truncated_prompt,
                self.truncated_answer,
                self.truncated_at.join(", ")
            ));
        }
        let m = self.prompt_mismatch;
        if m > 0 {
            let more = if m > self.prompt_mismatch_at.len() { ", ..." } else { "" };
            parts.push(format!(
                "{m} of {} examples have a prompt whose tokens are not a prefix of the tokens of prompt + completion (tokens merge across the boundary, e.g. a prompt ending in a newline or space and a completion starting with spaces): the completion is trained from where they diverge, a context that differs from the prompt alone; end prompts on a token boundary to avoid it ({}{more})",
                self.examples,
                self.prompt_mismatch_at.join(", ")
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Number of leading tokens `a` and `b` have in common (TRL's `common_prefix_length`).
fn common_prefix_length(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Build one example from a record.
pub fn build_example(tok: &Tokenizer, record: &Record, opts: &DataOptions) -> LineResult<Example> {
    build_example_noted(tok, record, opts).map(|(ex, _)| ex)
}

/// [`build_example`], also saying whether a plain prompt's tokens were not a prefix of the
/// tokens of prompt + completion (see [`DataReport::prompt_mismatch`]).
pub fn build_example_noted(tok: &Tokenizer, record: &Record, opts: &DataOptions) -> LineResult<(Example, bool)> {
    let mut mismatch = false;
    let (ids, trained) = match record {
        Record::Tokenized { ids, trained } => (ids.clone(), trained.clone()),
        Record::Text(text) => {
            let mut ids = tok.encode(text, true).map_err(|e| (DataErrorKind::Tokenizer, e.to_string()))?;
            ids.extend(tok.eos_id());
            let trained = vec![true; ids.len()];
            (ids, trained)
        }
        Record::PromptCompletion { prompt, completion } if opts.plain_as_chat => {
            let messages = vec![Message::new("user", prompt.clone()), Message::new("assistant", completion.clone())];
            chat_example(tok, &messages, 0, None, opts)?
        }
        Record::PromptCompletion { prompt, completion } => {
            // TRL's SFTTrainer (trl 1.16.0, trainer/sft_trainer.py, prompt-completion case):
            //   prompt_ids = tok(prompt)["input_ids"]
            //   ids = tok(prompt + completion + eos)["input_ids"]
            //   prompt_len = common_prefix_length(prompt_ids, ids)  # warns if < len(prompt_ids)
            //   completion_mask = [0] * prompt_len + [1] * (len(ids) - prompt_len)
            // From ids alone, so every tokenizer source of a model gives the same mask.
            let enc = |t: &str| tok.encode_with_offsets(t, true).map_err(|e| (DataErrorKind::Tokenizer, e.to_string()));
            let mut prompt_enc = enc(prompt)?;
            // An EOS the post-processor or the config appends (add_eos_token, an empty
            // range) ends the prompt alone but not the prompt inside prompt + completion:
            // leave it out of the comparison (TRL would report every such prompt).
            if matches!(prompt_enc.last(), Some((id, r)) if r.is_empty() && tok.eos_id() == Some(*id)) {
                prompt_enc.pop();
            }
            let prompt_ids: Vec<u32> = prompt_enc.into_iter().map(|(id, _)| id).collect();
            let mut ids: Vec<u32> = enc(&format!("{prompt}{completion}"))?.into_iter().map(|(id, _)| id).collect();
            let k = common_prefix_length(&prompt_ids, &ids);
            mismatch = k < prompt_ids.len();
            let mut trained: Vec<bool> = (0..ids.len()).map(|i| i >= k).collect();
            // EOS, trained, unless the sequence already ends with it (a post-processor that
            // appends it, or a completion that ends with its text).
            if let Some(eos) = tok.eos_id() {
                if ids.last() != Some(&eos) {
                    ids.push(eos);
                    trained.push(true);
                } else if let Some(t) = trained.last_mut() {
                    *t = true;
                }
            }
            (ids, trained)
        }
        Record::Chat { messages, trained_from, tools } => {
            chat_example(tok, messages, *trained_from, tools.as_ref(), opts)?
        }
    };
    if !trained.iter().skip(1).any(|&t| t) {
        return bad(DataErrorKind::EmptyAnswer, "no answer token to train (the answer produced no tokens)");
    }
    Ok((Example { ids, trained, origin: String::new() }, mismatch))
}

fn chat_example(
    tok: &Tokenizer,
    messages: &[Message],
    trained_from: usize,
    tools: Option<&Value>,
    opts: &DataOptions,
) -> LineResult<(Vec<u32>, Vec<bool>)> {
    let tmpl = tok.require_chat_template().map_err(|e| (DataErrorKind::Template, e.to_string()))?;
    let render = |msgs: &[Message], agp: bool| -> LineResult<String> {
        let v = serde_json::to_value(msgs).unwrap_or(Value::Null);
        tmpl.render_json(&v, agp, tools).map_err(|e| (DataErrorKind::Template, e.to_string()))
    };
    let full = render(messages, false)?;
    let enc = tok.encode_with_offsets(&full, false).map_err(|e| (DataErrorKind::Tokenizer, e.to_string()))?;
    let mut turns: Vec<usize> = (trained_from..messages.len()).filter(|&k| messages[k].role == "assistant").collect();
    if opts.last_turn_only {
        turns = turns.split_off(turns.len().saturating_sub(1));
    }
    let mut spans = Vec::new();
    let mut cursor = 0usize;
    for k in turns {
        let span = answer_span(&full, &render, messages, k, cursor)?;
        // Inside the span: from where the content starts to the end of the last special
        // token (the end-of-turn marker); what the template writes after it (a newline)
        // is not trained. Without a special token, the whole span is trained.
        // The content as written, or trimmed (templates that strip it).
        let content = &messages[k].content;
        let start = full
            .get(span.clone())
            .and_then(|s| {
                [content.as_str(), content.trim()].into_iter().filter(|c| !c.is_empty()).find_map(|c| s.find(c))
            })
            .map(|i| span.start + i)
            .unwrap_or(span.start);
        let end = enc
            .iter()
            .filter(|(id, r)| tok.is_special(*id) && r.start >= start && r.end <= span.end && r.end > r.start)
            .map(|(_, r)| r.end)
            .next_back()
            .unwrap_or(span.end);
        spans.push(start..end);
        cursor = span.end;
    }
    let ids: Vec<u32> = enc.into_iter().map(|(id, _)| id).collect();
    // Byte spans to token indices from ids alone: the text before a boundary, tokenized
    // alone, and the conversation's tokens agree up to the token that straddles the
    // boundary (or starts at it). A straddling token is trained at both ends (it holds
    // answer text), as transformers' assistant masks do.
    let encode = |t: &str| tok.encode(t, false).map_err(|e| (DataErrorKind::Tokenizer, e.to_string()));
    let mut trained = vec![false; ids.len()];
    for s in spans {
        let (Some(before), Some(through)) = (full.get(..s.start), full.get(..s.end)) else { continue };
        let a = common_prefix_length(&encode(before)?, &ids);
        let t = encode(through)?;
        let c = common_prefix_length(&t, &ids);
        let b = if c == t.len() { c } else { (c + 1).min(ids.len()) };
        for x in trained.iter_mut().take(b).skip(a) {
            *x = true;
        }
    }
    Ok((ids, trained))
}

/// The byte span of `full` that assistant turn `k` adds. Prefers the difference of two
/// renders (up to the turn with the generation prompt, and through the turn); falls back
/// to finding the content in `full` after `cursor` for templates whose renders are not
/// prefixes of each other (e.g. ones that rewrite earlier turns).
fn answer_span(
    full: &str,
    render: &dyn Fn(&[Message], bool) -> LineResult<String>,
    messages: &[Message],
    k: usize,
    cursor: usize,
) -> LineResult<Range<usize>> {
    let through = render(&messages[..=k], false)?;
    if full.starts_with(&through) {
        let with_prompt = render(&messages[..k], true)?;
        let before = if through.starts_with(&with_prompt) && with_prompt.len() >= cursor {
            Some(with_prompt)
        } else {
            let plain = render(&messages[..k], false)?;
            (through.starts_with(&plain) && plain.len() >= cursor).then_some(plain)
        };
        if let Some(before) = before {
            return Ok(before.len()..through.len());
        }
    }
    let content = messages[k].content.trim();
    match full.get(cursor..).and_then(|rest| rest.find(content)) {
        Some(i) if !content.is_empty() => {
            let start = cursor + i;
            // to the start of the next turn's text, or the end
            let next = messages[k + 1..]
                .iter()
                .filter_map(|m| {
                    let c = m.content.trim();
                    full.get(start + content.len()..).and_then(|r| r.find(c)).map(|j| start + content.len() + j)
                })
                .next();
            Ok(start..next.unwrap_or(full.len()))
        }
        _ => bad(
            DataErrorKind::Template,
            format!("could not find assistant turn {k} in the rendered conversation (the chat template changes it)"),
        ),
    }
}

/// Truncate to `max_len`: prompt tokens (before the first trained token) from the left
/// first, then tokens from the right. Returns (prompt cut, answer cut).
pub fn truncate(ex: &mut Example, max_len: usize) -> (bool, bool) {
    let n = ex.ids.len();
    if n <= max_len {
        return (false, false);
    }
    let first_trained = ex.trained.iter().skip(1).position(|&t| t).map(|p| p + 1).unwrap_or(n);
    // Keep one token before the first trained one so it has a context to be predicted from.
    let can_drop = first_trained.saturating_sub(1);
    let drop = (n - max_len).min(can_drop);
    ex.ids.drain(..drop);
    ex.trained.drain(..drop);
    let answer_cut = ex.ids.len() > max_len;
    ex.ids.truncate(max_len);
    ex.trained.truncate(max_len);
    (drop > 0, answer_cut)
}

/// Tokenize every record of a parsed file.
pub fn build_examples(
    tok: &Tokenizer,
    file: &str,
    records: &[(usize, Record)],
    opts: &DataOptions,
) -> Result<(Vec<Example>, DataReport)> {
    if let Some(m) = opts.max_len {
        if m < 2 {
            return Err(Error::Usage(format!("maximum length {m} is too short (at least 2 tokens)")));
        }
    }
    let mut report = DataReport::default();
    let mut out = Vec::with_capacity(records.len());
    for (line, r) in records {
        let origin = format!("{file}:{line}");
        let (mut ex, mismatch) = build_example_noted(tok, r, opts).map_err(|(kind, message)| DataError {
            file: file.to_owned(),
            line: *line,
            kind,
            message,
        })?;
        ex.origin = origin.clone();
        if mismatch {
            report.prompt_mismatch += 1;
            if report.prompt_mismatch_at.len() < 5 {
                report.prompt_mismatch_at.push(origin.clone());
            }
        }
        if let Some(m) = opts.max_len {
            let (p, a) = truncate(&mut ex, m);
            if a {
                report.truncated_answer += 1;
            } else if p {
                report.truncated_prompt += 1;
            }
            if (p || a) && report.truncated_at.len() < 5 {
                report.truncated_at.push(origin);
            }
        }
        report.examples += 1;
        report.tokens += ex.ids.len();
        report.trained_tokens += ex.trained.iter().skip(1).filter(|&&t| t).count();
        out.push(ex);
    }
    Ok((out, report))
}

/// Parse and tokenize a JSONL text.
pub fn load_jsonl(tok: &Tokenizer, file: &str, text: &str, opts: &DataOptions) -> Result<(Vec<Example>, DataReport)> {
    let records = parse_jsonl(file, text)?;
    build_examples(tok, file, &records, opts)
}

/// Hold out `fraction` of the examples (rounded, at least one, never all) for validation,
/// chosen by a seeded shuffle; both parts keep file order.
pub fn split<T>(examples: Vec<T>, fraction: f64, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::Usage(format!("validation fraction {fraction} must be between 0 and 1")));
    }
    let n = examples.len();
    if n < 2 {
        return Err(Error::Usage(format!("{n} example(s): too few to hold any out for validation")));
    }
    let k = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    let mut held = vec![false; n];
    for &i in &idx[..k] {
        held[i] = true;
    }
    let (mut train, mut val) = (Vec::with_capacity(n - k), Vec::with_capacity(k));
    for (ex, h) in examples.into_iter().zip(held) {
        if h {
            val.push(ex);
        } else {
            train.push(ex);
        }
    }
    Ok((train, val))
}

/// One token of a mask preview.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PreviewToken {
    pub id: u32,
    /// The token's text (`decode([id])`).
    pub text: String,
    /// Whether the token is a target (trained). The first token never is.
    pub trained: bool,
}

/// The tokens of `ex` as text, each with its trained flag.
pub fn preview(tok: &Tokenizer, ex: &Example) -> Vec<PreviewToken> {
    ex.ids
        .iter()
        .zip(&ex.trained)
        .enumerate()
        .map(|(i, (&id, &t))| PreviewToken { id, text: tok.token_text(id), trained: t && i > 0 })
        .collect()
}

/// The preview as one string: trained runs in `[[...]]`.
pub fn preview_string(tok: &Tokenizer, ex: &Example) -> String {
    let mut s = String::new();
    let mut open = false;
    for p in preview(tok, ex) {
        if p.trained != open {
            s.push_str(if p.trained { "[[" } else { "]]" });
            open = p.trained;
        }
        s.push_str(&p.text);
    }
    if open {
        s.push_str("]]");
    }
    s
}
