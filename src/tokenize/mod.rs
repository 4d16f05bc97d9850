//! Tokenizer (Hugging Face `tokenizers`, loaded from `tokenizer.json` bytes) and chat
//! templates (Jinja through `minijinja`, set up like transformers' sandboxed environment).
//!
//! Everything here works on bytes and strings, never on paths, so the browser and the
//! command line share it: the caller reads the files (or fetches them) and hands the
//! bytes over.

mod gguf;

use std::collections::HashSet;
use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::{Error, Result};

/// Tokens that commonly end a sequence or a turn, used to guess the EOS when no
/// `tokenizer_config.json` names one.
const EOS_GUESSES: &[&str] = &["<|endoftext|>", "</s>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<eos>"];

/// A tokenizer plus what `tokenizer_config.json` says about special tokens and chat.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<(String, u32)>,
    eos: Vec<(String, u32)>,
    unk: Option<String>,
    pad: Option<String>,
    /// Ids of added tokens marked `special` (`<|im_start|>`, `<|im_end|>`, ...).
    special: HashSet<u32>,
    /// `add_bos_token` / `add_eos_token` from the config, where the tokenizer's own
    /// post-processor does not add them already.
    add_bos: bool,
    add_eos: bool,
    chat: Option<ChatTemplate>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("chat_template", &self.chat.is_some())
            .finish()
    }
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{what}: {e}"))
}

/// A special-token entry of `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_str(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_owned),
        _ => None,
    }
}

impl Tokenizer {
    /// Load from the bytes of `tokenizer.json` and, optionally, `tokenizer_config.json`
    /// (special tokens, `add_bos_token`, `chat_template`). transformers 5 saves the chat
    /// template as `chat_template.jinja` next to them: pass it to [`with_chat_template`].
    ///
    /// [`with_chat_template`]: Tokenizer::with_chat_template
    pub fn from_hf_bytes(tokenizer_json: &[u8], tokenizer_config_json: Option<&[u8]>) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(|e| tok_err("tokenizer.json", e))?;
        let config: Json = match tokenizer_config_json {
            Some(b) => serde_json::from_slice(b).map_err(|e| tok_err("tokenizer_config.json", e))?,
            None => Json::Null,
        };
        let special: HashSet<u32> =
            inner.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special).map(|(id, _)| id).collect();
        let lookup = |name: &str| -> Result<Option<(String, u32)>> {
            match token_str(config.get(name)) {
                None => Ok(None),
                Some(s) => match inner.token_to_id(&s) {
                    Some(id) => Ok(Some((s, id))),
                    None => Err(tok_err("tokenizer_config.json", format!("`{name}` {s:?} is not in the vocabulary"))),
                },
            }
        };
        let bos = lookup("bos_token")?;
        let mut eos: Vec<(String, u32)> = lookup("eos_token")?.into_iter().collect();
        if eos.is_empty() {
            eos = EOS_GUESSES
                .iter()
                .find_map(|&s| inner.token_to_id(s).map(|id| (s.to_owned(), id)))
                .into_iter()
                .collect();
        }
        let flag = |name: &str| config.get(name).and_then(|v| v.as_bool()).unwrap_or(false);
        let chat = match config.get("chat_template") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            // A list of named templates: take "default" (or the first).
            Some(Json::Array(list)) => {
                let named = |n: &str| {
                    list.iter()
                        .find(|t| t.get("name").and_then(|x| x.as_str()) == Some(n))
                        .and_then(|t| t.get("template"))
                };
                named("default")
                    .or_else(|| list.first().and_then(|t| t.get("template")))
                    .and_then(|t| t.as_str())
                    .map(str::to_owned)
            }
            Some(_) => return Err(tok_err("tokenizer_config.json", "`chat_template` must be a string or a list")),
        };
        let mut tok = Tokenizer {
            inner,
            bos,
            eos,
            unk: token_str(config.get("unk_token")),
            pad: token_str(config.get("pad_token")),
            special,
            add_bos: false,
            add_eos: false,
            chat: None,
        };
        // Honour add_bos_token / add_eos_token only where the post-processor does not
        // already add the token (Llama-style tokenizer.json files carry it themselves).
        let probe = tok.inner.encode("a", true).map_err(|e| tok_err("encode", e))?;
        let ids = probe.get_ids();
        if let (true, Some((_, b))) = (flag("add_bos_token"), &tok.bos) {
            tok.add_bos = ids.first() != Some(b);
        }
        if let (true, Some(&(_, e))) = (flag("add_eos_token"), tok.eos.first()) {
            tok.add_eos = ids.last() != Some(&e);
        }
        if let Some(src) = chat {
            tok = tok.with_chat_template(&src)?;
        }
        Ok(tok)
    }

    /// Set (or replace) the chat template, e.g. from `chat_template.jinja`.
    pub fn with_chat_template(mut self, source: &str) -> Result<Tokenizer> {
        let mut t = ChatTemplate::new(source)?;
        t.bos_token = self.bos.as_ref().map(|b| b.0.clone());
        t.eos_token = self.eos.first().map(|e| e.0.clone());
        t.unk_token = self.unk.clone();
        t.pad_token = self.pad.clone();
        self.chat = Some(t);
        Ok(self)
    }

    /// Add token ids that also end generation (e.g. `generation_config.json`'s list).
    pub fn with_extra_eos(mut self, ids: &[u32]) -> Tokenizer {
        for &id in ids {
            if !self.eos.iter().any(|e| e.1 == id) {
                let s = self.inner.id_to_token(id).unwrap_or_default();
                self.eos.push((s, id));
            }
        }
        self
    }

    /// Token ids of `text`. With `add_special`, the tokenizer's post-processor runs (and
    /// the config's `add_bos_token` / `add_eos_token`), like transformers'
    /// `tok(text, add_special_tokens=...)`. Special-token strings in `text` always map to
    /// their ids.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        Ok(self.encode_with_offsets(text, add_special)?.into_iter().map(|(id, _)| id).collect())
    }

    /// Token ids with the byte range of `text` each covers (empty ranges for tokens the
    /// post-processor or the config added).
    pub fn encode_with_offsets(&self, text: &str, add_special: bool) -> Result<Vec<(u32, std::ops::Range<usize>)>> {
        let enc = self.inner.encode(text, add_special).map_err(|e| tok_err("encode", e))?;
        let mut out: Vec<(u32, std::ops::Range<usize>)> =
            enc.get_ids().iter().zip(enc.get_offsets()).map(|(&id, &(a, b))| (id, a..b)).collect();
        if add_special {
            if let (true, Some((_, b))) = (self.add_bos, &self.bos) {
                out.insert(0, (*b, 0..0));
            }
            if let (true, Some(&(_, e))) = (self.add_eos, self.eos.first()) {
                out.push((e, text.len()..text.len()));
            }
        }
        Ok(out)
    }

    /// Text of `ids`, special tokens included (transformers' `decode(ids)`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| tok_err("decode", e))
    }

    /// Text of `ids` without special tokens (`decode(ids, skip_special_tokens=True)`).
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| tok_err("decode", e))
    }

    /// The string of one token as it appears in text (`<|im_end|>`, ` world`, `\n`).
    pub fn token_text(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_else(|_| format!("<{id}>"))
    }

    /// Ids that end a sequence: the config's `eos_token` first, then any extras.
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos.iter().map(|e| e.1).collect()
    }

    /// The main EOS id (appended to plain-text examples).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos.first().map(|e| e.1)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|b| b.1)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    /// The chat template or an error saying there is none.
    pub fn require_chat_template(&self) -> Result<&ChatTemplate> {
        self.chat.as_ref().ok_or_else(|| {
            Error::Tokenizer("this tokenizer has no chat template (no `chat_template` in tokenizer_config.json and no chat_template.jinja)".into())
        })
    }
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template, rendered the way transformers' `apply_chat_template(...,
/// tokenize=False)` renders it: `trim_blocks` and `lstrip_blocks` on, Python string
/// methods (`strip`, `startswith`, `split`, ...), `namespace`, `raise_exception`, and a
/// `tojson` that writes what Python's `json.dumps` writes.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
    /// Further template variables, as transformers' `apply_chat_template(..., **kwargs)`
    /// passes them: e.g. Qwen3's `enable_thinking` (false: the generation prompt gets an
    /// empty `<think>` block). The named variables above win over these.
    pub vars: serde_json::Map<String, Json>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source", &self.source).finish()
    }
}

fn template_err(e: minijinja::Error) -> Error {
    // The full chain (a raise_exception message, the line in the template).
    let mut msg = match e.kind() {
        ErrorKind::InvalidOperation => e.detail().unwrap_or("invalid operation").to_owned(),
        _ => e.to_string(),
    };
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        let _ = write!(msg, ": {s}");
        src = s.source();
    }
    Error::Template(msg)
}

impl ChatTemplate {
    /// Compile `source`. Syntax errors are reported here, not at the first render.
    pub fn new(source: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("tojson", tojson);
        // transformers 5 strips template comments' surroundings the same way; the
        // `{% generation %}` tag (assistant masks) is handled by removing the tags, which
        // leaves exactly the text transformers renders.
        let cleaned = strip_generation_tags(source);
        env.add_template_owned("chat", cleaned).map_err(template_err)?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: None,
            eos_token: None,
            unk_token: None,
            pad_token: None,
            vars: serde_json::Map::new(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text of `messages`, plus the assistant header when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_json(&serde_json::to_value(messages).unwrap_or(Json::Null), add_generation_prompt, None)
    }

    /// Render messages given as JSON (any extra keys pass through), with optional tools.
    /// Objects keep their key order, so `tojson` writes them as Python would.
    pub fn render_json(&self, messages: &Json, add_generation_prompt: bool, tools: Option<&Json>) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(template_err)?;
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            tools => tools.map(Value::from_serialize),
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
            unk_token => self.unk_token.clone(),
            pad_token => self.pad_token.clone(),
            ..Value::from_serialize(&self.vars)
        };
        tmpl.render(ctx).map_err(template_err)
    }
}

/// Turn `{% generation %}` / `{% endgeneration %}` (transformers' assistant-mask tags,
/// unknown to minijinja) into `{% if true %}` / `{% endif %}`, keeping `-` markers, so
/// the rendered text is the same as transformers'.
fn strip_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find("{%") {
        let tail = &rest[i + 2..];
        let Some(j) = tail.find("%}") else { break };
        let body = &tail[..j];
        let stmt = match body.trim_start_matches(['-', '+']).trim_end_matches(['-', '+']).trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        out.push_str(&rest[..i]);
        match stmt {
            Some(stmt) => {
                let lead = if body.starts_with('-') { "{%- " } else { "{% " };
                let trail = if body.ends_with('-') { " -%}" } else { " %}" };
                out.push_str(lead);
                out.push_str(stmt);
                out.push_str(trail);
            }
            None => out.push_str(&rest[i..i + 2 + j + 2]),
        }
        rest = &tail[j + 2..];
    }
    out.push_str(rest);
    out
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=...,
/// separators=..., sort_keys=...)`.
fn tojson(value: Value, indent: Option<Value>, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => Some(v.as_str().unwrap_or("").to_owned()),
        },
    };
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([a, b]) => (a.clone(), b.clone()),
        Some(_) => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "separators must be a pair")),
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let opts = JsonOpts { indent, item_sep, key_sep, ensure_ascii, sort_keys };
    let mut out = String::new();
    write_json(&mut out, &value, &opts, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn write_json(out: &mut String, v: &Value, o: &JsonOpts, depth: usize) -> std::result::Result<(), minijinja::Error> {
    if depth > 512 {
        return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: nesting too deep"));
    }
    let newline = |out: &mut String, d: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..d {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let (true, Some(i)) = (v.is_integer(), v.as_i64()) {
                let _ = write!(out, "{i}");
            } else if let Ok(f) = f64::try_from(v.clone()) {
                out.push_str(&py_float(f));
            } else {
                // an integer beyond i64 (i128/u128): its decimal digits
                out.push_str(&v.to_string());
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or(""), o.ensure_ascii),
        ValueKind::Bytes => write_json_str(out, &String::from_utf8_lossy(v.as_bytes().unwrap_or(&[])), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                write_json(out, it, o, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                match k.as_str() {
                    Some(s) => write_json_str(out, s, o.ensure_ascii),
                    None => write_json_str(out, &k.to_string(), o.ensure_ascii),
                }
                out.push_str(&o.key_sep);
                write_json(out, &v.get_item(k)?, o, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => write_json_str(out, &v.to_string(), o.ensure_ascii),
    }
    Ok(())
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-trip digits, scientific notation when the
/// decimal exponent is below -4 or at least 16, `NaN` / `Infinity` as `json.dumps`.
pub(crate) fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "d.ddde[-]x".
    let e = format!("{f:e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mant) = mant.strip_prefix('-').map(|m| ("-", m)).unwrap_or(("", mant));
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let s = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456.789, "123456.789"),
            (1e16, "1e+16"),
            (1.234e20, "1.234e+20"),
            (-2.5, "-2.5"),
            (0.0001, "0.0001"),
            (1e15, "1000000000000000.0"),
        ] {
            assert_eq!(py_float(f), s, "{f}");
        }
    }

    #[test]
    fn generation_tags_removed() {
        let t =
            ChatTemplate::new("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}!{% endfor %}")
                .unwrap();
        assert_eq!(t.render(&[Message::new("user", "a"), Message::new("assistant", "b")], false).unwrap(), "a!b!");
    }
}
