//! `POST /v1/audio/transcriptions` and `POST /v1/audio/translations` (multipart uploads).

use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::{FutureExt, TryStreamExt};

use crate::audio::formats::{self, Format};
use crate::audio::{self, Task, TranscriptionRequest};
use crate::engines::whisper::Search;
use crate::error::ApiError;
use crate::runtime::Runtime;

/// Text fields are small; anything longer is a client mistake.
const MAX_FIELD_BYTES: usize = 64 * 1024;

/// `/v1/audio/transcriptions`.
pub async fn transcriptions(req: HttpRequest, payload: web::Payload, runtime: web::Data<Runtime>) -> HttpResponse {
    respond(req, payload, runtime, Task::Transcribe).await
}

/// `/v1/audio/translations` (to English; multilingual models only).
pub async fn translations(req: HttpRequest, payload: web::Payload, runtime: web::Data<Runtime>) -> HttpResponse {
    respond(req, payload, runtime, Task::Translate).await
}

async fn respond(req: HttpRequest, payload: web::Payload, runtime: web::Data<Runtime>, task: Task) -> HttpResponse {
    handle(&req, payload, &runtime, task).await.unwrap_or_else(|e| e.error_response())
}

#[derive(Default)]
struct Form {
    file: Option<(Vec<u8>, Option<String>)>,
    model: Option<String>,
    language: Option<String>,
    prompt: Option<String>,
    response_format: Option<String>,
    temperature: Option<String>,
    granularities: Vec<String>,
    beam_size: Option<String>,
    best_of: Option<String>,
    patience: Option<String>,
}

/// Reads the multipart form, holding at most `max_bytes` of audio (413 beyond, before reading more).
///
/// The body is read whole first (it is bounded), then parsed from memory in one pass: with every byte
/// at hand the parse cannot legitimately wait, so a form that stops inside a field (where the multipart
/// parser would wait for bytes that never come) is refused as malformed instead of hanging.
async fn read_form(req: &HttpRequest, mut payload: web::Payload, max_bytes: usize) -> Result<Form, ApiError> {
    let limit = max_bytes + FORM_OVERHEAD_BYTES;
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit: max_bytes });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(64 * 1024).min(limit));
    while let Some(chunk) =
        payload.try_next().await.map_err(|e| ApiError::bad_request(format!("Could not read the request body: {e}")))?
    {
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit: max_bytes });
        }
        body.extend_from_slice(&chunk);
    }
    let stream = futures_util::stream::iter([Ok::<_, actix_web::error::PayloadError>(body.freeze())]);
    parse_form(req.headers(), stream, max_bytes)
        .now_or_never()
        .unwrap_or_else(|| Err(ApiError::bad_request("Malformed multipart form: the body ends inside a field")))
}

/// Room for the form's text fields and part headers beside the audio file.
const FORM_OVERHEAD_BYTES: usize = 8 * MAX_FIELD_BYTES;

async fn parse_form(
    headers: &header::HeaderMap,
    stream: impl futures_util::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>> + 'static,
    max_bytes: usize,
) -> Result<Form, ApiError> {
    let malformed =
        |e: actix_multipart::MultipartError| ApiError::bad_request(format!("Malformed multipart form: {e}"));
    let mut multipart = Multipart::new(headers, stream);
    let mut form = Form::default();
    while let Some(mut field) = multipart.try_next().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_string();
        let limit = if name == "file" { max_bytes } else { MAX_FIELD_BYTES };
        let filename = field.content_disposition().and_then(|d| d.get_filename()).map(str::to_string);
        let mut bytes = Vec::new();
        while let Some(chunk) = field.try_next().await.map_err(malformed)? {
            if bytes.len() + chunk.len() > limit {
                return Err(if name == "file" {
                    ApiError::PayloadTooLarge { limit: max_bytes }
                } else {
                    ApiError::invalid(&name, format!("form field {name} is longer than {MAX_FIELD_BYTES} bytes"))
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let text = || {
            String::from_utf8(bytes.clone()).map_err(|_| ApiError::invalid(&name, format!("{name} is not UTF-8 text")))
        };
        match name.as_str() {
            "file" => form.file = Some((bytes, filename)),
            "model" => form.model = Some(text()?),
            "language" => form.language = Some(text()?),
            "prompt" => form.prompt = Some(text()?),
            "response_format" => form.response_format = Some(text()?),
            "temperature" => form.temperature = Some(text()?),
            "timestamp_granularities[]" | "timestamp_granularities" => form.granularities.push(text()?),
            "beam_size" => form.beam_size = Some(text()?),
            "best_of" => form.best_of = Some(text()?),
            "patience" => form.patience = Some(text()?),
            _ => {}
        }
    }
    Ok(form)
}

/// Translates the form into a [`TranscriptionRequest`], and the transcript into the asked format.
async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    runtime: &Runtime,
    task: Task,
) -> Result<HttpResponse, ApiError> {
    let read = read_form(req, payload, runtime.settings.audio.max_bytes);
    let form = super::body::within(runtime.settings.body_read_timeout, read).await?;
    let model = form
        .model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::invalid("model", "the form needs a `model` field"))?;
    crate::telemetry::request_fields::note_model(&model);
    let format = match form.response_format.as_deref() {
        None | Some("") => Format::Json,
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::invalid(
                "response_format",
                format!("response_format must be json, text, srt, vtt or verbose_json, got {f:?}"),
            )
        })?,
    };
    let mut words = false;
    for g in &form.granularities {
        match g.as_str() {
            "segment" => {}
            "word" => words = true,
            other => {
                return Err(ApiError::invalid("timestamp_granularities", format!("unknown granularity {other:?}")))
            }
        }
    }
    let temperature = match form.temperature.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        None => 0.0,
        Some(t) => match t.parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => v,
            _ => {
                return Err(ApiError::invalid(
                    "temperature",
                    format!("temperature must be a number from 0 to 1, got {t:?}"),
                ))
            }
        },
    };
    let width = |name: &str, value: &Option<String>| -> Result<Option<usize>, ApiError> {
        let most = Search::MAX_WIDTH;
        match value.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(None),
            Some(t) => match t.parse::<usize>() {
                Ok(v) if Search::valid_width(v) => Ok(Some(v)),
                _ => Err(ApiError::invalid(name, format!("{name} must be a whole number from 1 to {most}, got {t:?}"))),
            },
        }
    };
    let beam_size = width("beam_size", &form.beam_size)?;
    let best_of = width("best_of", &form.best_of)?;
    let patience = match form.patience.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => match t.parse::<f64>() {
            Ok(v) if v > 0.0 && v <= 10.0 => Some(v),
            _ => {
                return Err(ApiError::invalid(
                    "patience",
                    format!("patience must be a number above 0, at most 10, got {t:?}"),
                ))
            }
        },
    };
    let (audio, filename) =
        form.file.ok_or_else(|| ApiError::invalid("file", "the form needs a `file` field with the audio"))?;
    let request = TranscriptionRequest {
        model,
        task,
        audio,
        filename,
        language: form.language,
        prompt: form.prompt,
        temperature,
        words: words && format == Format::VerboseJson,
        beam_size,
        best_of,
        patience,
    };
    let transcript = audio::transcribe(runtime, request).await?;
    Ok(match format {
        Format::Json => HttpResponse::Ok().json(serde_json::json!({ "text": transcript.text })),
        Format::Text => {
            HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(format!("{}\n", transcript.text))
        }
        // SubRip's registered type, as the seed sends it.
        Format::Srt => HttpResponse::Ok()
            .content_type("application/x-subrip; charset=utf-8")
            .body(formats::subtitles(&transcript, false)),
        Format::Vtt => {
            HttpResponse::Ok().content_type("text/vtt; charset=utf-8").body(formats::subtitles(&transcript, true))
        }
        Format::VerboseJson => HttpResponse::Ok().json(formats::verbose(&transcript, words)),
    })
}

#[cfg(test)]
mod properties {
    use super::*;
    use actix_web::test::TestRequest;
    use actix_web::FromRequest;
    use proptest::prelude::*;

    /// A well-formed form (a file and a model field) that the strategy then damages.
    fn form(boundary: &str, name: &str, value: &[u8]) -> Vec<u8> {
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"a.wav\"\r\n\
             Content-Type: audio/wav\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(value);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        body
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
        /// Forms cut short, with bytes flipped or spliced in, with odd names or boundaries: read or
        /// refused with a 4xx, never a panic or a hang.
        #[test]
        fn any_multipart_body_is_read_or_refused_with_a_4xx(
            boundary in "[A-Za-z0-9-]{1,20}",
            header_boundary in prop_oneof![Just(None), "[A-Za-z0-9-]{0,20}".prop_map(Some)],
            name in prop_oneof![Just("file".to_string()), ".{0,12}"],
            value in prop::collection::vec(any::<u8>(), 0..256),
            cut in any::<prop::sample::Index>(),
            noise in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        ) {
            let mut body = form(&boundary, &name, &value);
            for (at, byte) in noise {
                let i = at.index(body.len());
                body[i] = byte;
            }
            body.truncate(cut.index(body.len() + 1));
            let content_type = format!("multipart/form-data; boundary={}", header_boundary.unwrap_or(boundary));
            let (req, mut payload) =
                TestRequest::post().insert_header(("content-type", content_type)).set_payload(body).to_http_parts();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let result = runtime.block_on(tokio::task::LocalSet::new().run_until(async {
                let payload = web::Payload::from_request(&req, &mut payload).await.expect("payload");
                tokio::time::timeout(std::time::Duration::from_secs(5), read_form(&req, payload, 1024)).await
            }));
            let result = result.expect("the form is read or refused without hanging");
            if let Err(e) = result {
                prop_assert!(e.status_code().is_client_error(), "{e}");
            }
        }
    }
}
