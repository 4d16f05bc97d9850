//! Datasets: JSONL lines to examples (token ids + which tokens are trained).
//!
//! This module reads the pre-tokenized form `{"input_ids": [...], "prompt_len": k}` or
//! `{"input_ids": [...], "trained": [0/1, ...]}`; text formats come with the tokenizer.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::train::Example;

/// Parse a JSONL file's text. Errors name the file and the line.
pub fn parse_tokenized_jsonl(file: &str, text: &str) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let ln = i + 1;
        let origin = format!("{file}:{ln}");
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| Error::Data(format!("{origin}: invalid JSON ({e})")))?;
        let ids = v
            .get("input_ids")
            .and_then(|x| x.as_array())
            .ok_or_else(|| Error::Data(format!("{origin}: missing field `input_ids` (an array of token ids)")))?
            .iter()
            .map(|x| x.as_u64().filter(|&n| n <= u32::MAX as u64).map(|n| n as u32))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| Error::Data(format!("{origin}: `input_ids` must hold non-negative integers")))?;
        if ids.is_empty() {
            return Err(Error::Data(format!("{origin}: `input_ids` is empty")));
        }
        let ex = if let Some(p) = v.get("prompt_len") {
            let p = p.as_u64().filter(|&p| (p as usize) < ids.len()).ok_or_else(|| {
                Error::Data(format!("{origin}: `prompt_len` must be an integer below the token count {}", ids.len()))
            })?;
            Example::prompt_answer(ids, p as usize, origin)
        } else if let Some(t) = v.get("trained").and_then(|t| t.as_array()) {
            if t.len() != ids.len() {
                return Err(Error::Data(format!(
                    "{origin}: `trained` has {} entries for {} tokens",
                    t.len(),
                    ids.len()
                )));
            }
            let trained = t.iter().map(|x| x.as_u64() == Some(1) || x.as_bool() == Some(true)).collect();
            Example { ids, trained, origin }
        } else {
            Example::prompt_answer(ids, 1, origin)
        };
        out.push(ex);
    }
    if out.is_empty() {
        return Err(Error::Data(format!("{file}: no examples")));
    }
    Ok(out)
}
