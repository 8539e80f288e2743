//! The job request, parsed at the edge.
//!
//! `POST /api/jobs` accepts loosely typed JSON; everything behind the API takes a [`JobSpec`],
//! which cannot hold an invalid value. Parsing walks the JSON by hand instead of relying on
//! serde's first error, so that one 422 answer names *every* offending field by its JSON path
//! and the message a person can act on. Every optional field gets the default documented here
//! and in the README; the normalized spec (defaults filled in) is what the job stores and shows.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest accepted topic, in characters (API.md).
pub const TOPIC_MAX_CHARS: usize = 200;
/// Longest accepted free-text field other than the topic, in characters.
const TEXT_MAX_CHARS: usize = 200;

/// A fully validated job request with every default applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    pub brief: Brief,
    pub plan_spec: PlanSpec,
    pub voice_spec: VoiceSpec,
    pub render_spec: RenderSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Brief {
    pub topic: String,
    pub audience: String,
    pub goal: String,
    pub tone: String,
    pub language: String,
    pub aspect: Aspect,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanSpec {
    /// `hh:mm:ss` on the wire; whole seconds here.
    #[serde(with = "hms")]
    #[schema(value_type = String, pattern = r"^\d{2}:\d{2}:\d{2}$", example = "00:01:00")]
    pub target_duration: u32,
    pub pacing: Pacing,
    pub density: Density,
    pub style: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VoiceSpec {
    pub voice_name: String,
    pub rate: f64,
    pub pitch: f64,
    pub pause: Pause,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenderSpec {
    pub res: Resolution,
    pub container: Container,
    pub video_bitrate_k: u32,
    pub audio_bitrate_k: u32,
    pub fps: u32,
    pub codec: Codec,
    pub quality_level: Quality,
}

/// Declares a closed set of wire names as a Rust enum with `name()` and `parse()`.
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $(#[serde(rename = $wire)] $variant),+ }

        // By hand: the derive does not see serde renames that come through a macro.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($wire),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.name() == s)
            }

            fn choices() -> String {
                Self::ALL.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
            }
        }
    };
}

wire_enum!(Aspect { Widescreen = "Widescreen16x9", Vertical = "Vertical9x16", Square = "Square1x1" });
wire_enum!(Pacing { Chill = "Chill", Conversational = "Conversational", Fast = "Fast" });
wire_enum!(Density { Sparse = "Sparse", Balanced = "Balanced", Dense = "Dense" });
wire_enum!(Pause { Short = "Short", Natural = "Natural", Long = "Long", Dramatic = "Dramatic" });
wire_enum!(Resolution { P480 = "480p", P720 = "720p", P1080 = "1080p", P1440 = "1440p", P2160 = "2160p" });
wire_enum!(Container { Mp4 = "mp4", Webm = "webm", Mkv = "mkv" });
wire_enum!(Codec { H264 = "h264", Hevc = "hevc", Vp9 = "vp9", Av1 = "av1" });
wire_enum!(Quality { Draft = "Draft", Standard = "Standard", Good = "Good", High = "High", Maximum = "Maximum" });

impl Resolution {
    /// The short side of the frame in pixels.
    pub fn short_side(self) -> u32 {
        match self {
            Resolution::P480 => 480,
            Resolution::P720 => 720,
            Resolution::P1080 => 1080,
            Resolution::P1440 => 1440,
            Resolution::P2160 => 2160,
        }
    }
}

impl RenderSpec {
    /// Frame width and height for this resolution at the given aspect.
    pub fn frame_size(&self, aspect: Aspect) -> (u32, u32) {
        let short = self.res.short_side();
        // 16:9 long sides: 480p is 854 rounded up to an even number.
        let long = (short * 16).div_ceil(9).next_multiple_of(2);
        match aspect {
            Aspect::Widescreen => (long, short),
            Aspect::Vertical => (short, long),
            Aspect::Square => (short, short),
        }
    }
}

impl Container {
    /// Whether a file of this container may carry the codec (API.md).
    pub fn allows(self, codec: Codec) -> bool {
        match self {
            Container::Mp4 => matches!(codec, Codec::H264 | Codec::Hevc),
            Container::Webm => matches!(codec, Codec::Vp9 | Codec::Av1),
            Container::Mkv => true,
        }
    }

    pub fn extension(self) -> &'static str {
        self.name()
    }

    pub fn mime(self) -> &'static str {
        match self {
            Container::Mp4 => "video/mp4",
            Container::Webm => "video/webm",
            Container::Mkv => "video/x-matroska",
        }
    }
}

/// One reason a request was refused, with the JSON path of the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Dotted path, e.g. `brief.topic` (the form the README shows).
    pub field: String,
    /// RFC 6901 JSON Pointer to the same field, e.g. `/brief/topic`.
    pub pointer: String,
    pub detail: String,
}

/// The ways a request body can fail to become a [`JobSpec`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("the body is not valid JSON: {0}")]
    Malformed(String),
    #[error("{} invalid field(s)", .0.len())]
    Invalid(Vec<FieldError>),
}

impl JobSpec {
    /// Parses a request body; a well-formed body with bad values lists every bad field.
    pub fn from_json_bytes(body: &[u8]) -> Result<Self, SpecError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            // serde_json's message names a line and column only: nothing internal.
            SpecError::Malformed(e.to_string())
        })?;
        Self::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<Self, SpecError> {
        let mut v = Walker::default();
        let Some(root) = v.object(value, &[], true) else {
            return Err(SpecError::Invalid(v.errors));
        };
        let empty = Map::new();
        let brief = v.object_field(root, &["brief"], true).unwrap_or(&empty);
        let plan = v.object_field(root, &["planSpec"], false).unwrap_or(&empty);
        let voice = v.object_field(root, &["voiceSpec"], false).unwrap_or(&empty);
        let render = v.object_field(root, &["renderSpec"], false).unwrap_or(&empty);

        let topic = v.text(brief, &["brief", "topic"], None, TOPIC_MAX_CHARS);
        let brief = Brief {
            topic: topic.unwrap_or_default(),
            audience: v
                .text(brief, &["brief", "audience"], Some("General"), TEXT_MAX_CHARS)
                .unwrap_or_default(),
            goal: v.text(brief, &["brief", "goal"], Some("Inform"), TEXT_MAX_CHARS).unwrap_or_default(),
            tone: v.text(brief, &["brief", "tone"], Some("Informative"), TEXT_MAX_CHARS).unwrap_or_default(),
            language: v.language(brief, &["brief", "language"]),
            aspect: v.choice(brief, &["brief", "aspect"], Aspect::Widescreen),
        };
        let plan_spec = PlanSpec {
            target_duration: v.duration(plan, &["planSpec", "targetDuration"]),
            pacing: v.choice(plan, &["planSpec", "pacing"], Pacing::Conversational),
            density: v.choice(plan, &["planSpec", "density"], Density::Balanced),
            style: v.text(plan, &["planSpec", "style"], Some("Modern"), 50).unwrap_or_default(),
        };
        let voice_spec = VoiceSpec {
            voice_name: v.text(voice, &["voiceSpec", "voiceName"], Some("David"), 50).unwrap_or_default(),
            rate: v.number(voice, &["voiceSpec", "rate"], 1.0, 0.5, 2.0),
            pitch: v.number(voice, &["voiceSpec", "pitch"], 1.0, 0.5, 2.0),
            pause: v.choice(voice, &["voiceSpec", "pause"], Pause::Natural),
        };
        let container_given = render.get("container").is_some_and(|c| !c.is_null());
        let codec_given = render.get("codec").is_some_and(|c| !c.is_null());
        let mut container = v.choice(render, &["renderSpec", "container"], Container::Mp4);
        let mut codec = v.choice(render, &["renderSpec", "codec"], Codec::H264);
        // A missing half of the pair follows the given half, so `{"container":"webm"}` alone works.
        if container_given && !codec_given {
            codec = if container == Container::Webm { Codec::Vp9 } else { Codec::H264 };
        } else if codec_given && !container_given && !Container::Mp4.allows(codec) {
            container = Container::Webm;
        }
        let render_spec = RenderSpec {
            res: v.choice(render, &["renderSpec", "res"], Resolution::P1080),
            container,
            video_bitrate_k: v.integer(render, &["renderSpec", "videoBitrateK"], 5000, 100, 100_000),
            audio_bitrate_k: v.integer(render, &["renderSpec", "audioBitrateK"], 192, 32, 512),
            fps: v.integer(render, &["renderSpec", "fps"], 30, 1, 60),
            codec,
            quality_level: v.choice(render, &["renderSpec", "qualityLevel"], Quality::High),
        };
        if !render_spec.container.allows(render_spec.codec) && v.errors.is_empty() {
            v.fail(
                &["renderSpec", "codec"],
                format!(
                    "codec {} cannot go in a {} container (mp4: h264, hevc; webm: vp9, av1; mkv: any)",
                    render_spec.codec.name(),
                    render_spec.container.name()
                ),
            );
        }
        if v.errors.is_empty() {
            Ok(JobSpec { brief, plan_spec, voice_spec, render_spec })
        } else {
            Err(SpecError::Invalid(v.errors))
        }
    }
}

/// Collects field errors while reading a JSON tree.
#[derive(Default)]
struct Walker {
    errors: Vec<FieldError>,
}

impl Walker {
    fn fail(&mut self, path: &[&str], detail: impl Into<String>) {
        self.errors.push(FieldError {
            field: if path.is_empty() { "$".to_owned() } else { path.join(".") },
            pointer: path.iter().map(|p| format!("/{p}")).collect(),
            detail: detail.into(),
        });
    }

    fn object<'a>(
        &mut self,
        value: &'a Value,
        path: &[&str],
        required: bool,
    ) -> Option<&'a Map<String, Value>> {
        match value {
            Value::Object(map) => Some(map),
            Value::Null if !required => None,
            _ => {
                self.fail(path, "must be a JSON object");
                None
            }
        }
    }

    fn object_field<'a>(
        &mut self,
        parent: &'a Map<String, Value>,
        path: &[&str],
        required: bool,
    ) -> Option<&'a Map<String, Value>> {
        let key = path.last().copied().unwrap_or_default();
        match parent.get(key) {
            None | Some(Value::Null) if required => {
                self.fail(path, "is required");
                None
            }
            None => None,
            Some(v) => self.object(v, path, required),
        }
    }

    /// The field's value, or `None` when absent or null (both mean "use the default").
    fn get<'a>(parent: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
        let key = path.last().copied().unwrap_or_default();
        parent.get(key).filter(|v| !v.is_null())
    }

    fn text(
        &mut self,
        parent: &Map<String, Value>,
        path: &[&str],
        default: Option<&str>,
        max: usize,
    ) -> Option<String> {
        match (Self::get(parent, path), default) {
            (None, Some(d)) => Some(d.to_owned()),
            (None, None) => {
                self.fail(path, "is required");
                None
            }
            (Some(Value::String(s)), _) => {
                let chars = s.chars().count();
                if s.trim().is_empty() {
                    self.fail(path, format!("must not be blank (1 to {max} characters)"));
                    None
                } else if chars > max {
                    self.fail(path, format!("must be at most {max} characters (got {chars})"));
                    None
                } else if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                    self.fail(path, "must not contain control characters");
                    None
                } else {
                    Some(s.clone())
                }
            }
            (Some(_), _) => {
                self.fail(path, "must be a string");
                None
            }
        }
    }

    fn language(&mut self, parent: &Map<String, Value>, path: &[&str]) -> String {
        let lang = self.text(parent, path, Some("en"), 35).unwrap_or_else(|| "en".to_owned());
        let ok = lang.split('-').all(|part| {
            !part.is_empty() && part.len() <= 8 && part.chars().all(|c| c.is_ascii_alphanumeric())
        });
        if !ok {
            self.fail(path, "must be a language tag such as en or pt-BR");
        }
        lang
    }

    fn choice<T: WireChoice>(&mut self, parent: &Map<String, Value>, path: &[&str], default: T) -> T {
        match Self::get(parent, path) {
            None => default,
            Some(Value::String(s)) => T::parse_wire(s).unwrap_or_else(|| {
                self.fail(path, format!("must be one of {}", T::wire_choices()));
                default
            }),
            Some(_) => {
                self.fail(path, format!("must be a string, one of {}", T::wire_choices()));
                default
            }
        }
    }

    fn number(
        &mut self,
        parent: &Map<String, Value>,
        path: &[&str],
        default: f64,
        min: f64,
        max: f64,
    ) -> f64 {
        match Self::get(parent, path) {
            None => default,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if (min..=max).contains(&x) => x,
                _ => {
                    self.fail(path, format!("must be a number from {min:.1} to {max:.1}"));
                    default
                }
            },
            Some(_) => {
                self.fail(path, format!("must be a number from {min:.1} to {max:.1}"));
                default
            }
        }
    }

    fn integer(
        &mut self,
        parent: &Map<String, Value>,
        path: &[&str],
        default: u32,
        min: u32,
        max: u32,
    ) -> u32 {
        match Self::get(parent, path) {
            None => default,
            Some(Value::Number(n)) => match n.as_u64().and_then(|x| u32::try_from(x).ok()) {
                Some(x) if (min..=max).contains(&x) => x,
                _ => {
                    self.fail(path, format!("must be a whole number from {min} to {max}"));
                    default
                }
            },
            Some(_) => {
                self.fail(path, format!("must be a whole number from {min} to {max}"));
                default
            }
        }
    }

    fn duration(&mut self, parent: &Map<String, Value>, path: &[&str]) -> u32 {
        const DEFAULT: u32 = 30;
        match Self::get(parent, path) {
            None => DEFAULT,
            Some(Value::String(s)) => match hms::parse(s) {
                Some(secs) if (2..=600).contains(&secs) => secs,
                Some(_) => {
                    self.fail(path, "must be from 00:00:02 to 00:10:00");
                    DEFAULT
                }
                None => {
                    self.fail(path, "must be a duration hh:mm:ss, from 00:00:02 to 00:10:00");
                    DEFAULT
                }
            },
            Some(_) => {
                self.fail(path, "must be a string hh:mm:ss, from 00:00:02 to 00:10:00");
                DEFAULT
            }
        }
    }
}

/// Lets [`Walker::choice`] read any wire enum.
trait WireChoice: Copy {
    fn parse_wire(s: &str) -> Option<Self>;
    fn wire_choices() -> String;
}

macro_rules! impl_wire_choice {
    ($($t:ty),+) => {$(
        impl WireChoice for $t {
            fn parse_wire(s: &str) -> Option<Self> { Self::parse(s) }
            fn wire_choices() -> String { Self::choices() }
        }
    )+};
}
impl_wire_choice!(Aspect, Pacing, Density, Pause, Resolution, Container, Codec, Quality);

/// `hh:mm:ss` durations as whole seconds.
pub mod hms {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses `hh:mm:ss` with two-digit minutes and seconds below 60.
    pub fn parse(s: &str) -> Option<u32> {
        let mut parts = s.split(':');
        let (h, m, sec) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || [h, m, sec]
                .iter()
                .any(|p| p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        let (h, m, sec): (u32, u32, u32) = (h.parse().ok()?, m.parse().ok()?, sec.parse().ok()?);
        (m < 60 && sec < 60).then_some(h * 3600 + m * 60 + sec)
    }

    pub fn format(secs: u32) -> String {
        format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    }

    pub fn serialize<S: Serializer>(secs: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*secs))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).ok_or_else(|| serde::de::Error::custom("expected hh:mm:ss"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(v: Value) -> Vec<String> {
        match JobSpec::from_value(&v) {
            Err(SpecError::Invalid(errs)) => errs.into_iter().map(|e| e.field).collect(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_topic_alone_gets_every_default() {
        let spec = JobSpec::from_value(&json!({"brief": {"topic": "T"}})).expect("valid");
        assert_eq!(spec.plan_spec.target_duration, 30);
        assert_eq!(spec.render_spec.container, Container::Mp4);
        assert_eq!(spec.render_spec.codec, Codec::H264);
        assert_eq!(spec.render_spec.frame_size(spec.brief.aspect), (1920, 1080));
    }

    #[test]
    fn every_bad_field_is_named_by_its_path() {
        let got = errors(json!({
            "brief": {"topic": "", "aspect": "Round"},
            "planSpec": {"targetDuration": "00:20:00"},
            "voiceSpec": {"rate": 3},
            "renderSpec": {"fps": 61, "res": "4k"}
        }));
        assert_eq!(
            got,
            [
                "brief.topic",
                "brief.aspect",
                "planSpec.targetDuration",
                "voiceSpec.rate",
                "renderSpec.res",
                "renderSpec.fps"
            ]
        );
    }

    #[test]
    fn container_and_codec_must_match() {
        assert_eq!(
            errors(json!({"brief": {"topic": "T"}, "renderSpec": {"container": "mp4", "codec": "vp9"}})),
            ["renderSpec.codec"]
        );
        let webm =
            JobSpec::from_value(&json!({"brief": {"topic": "T"}, "renderSpec": {"container": "webm"}}))
                .expect("valid");
        assert_eq!(webm.render_spec.codec, Codec::Vp9);
    }

    #[test]
    fn frame_sizes_follow_the_short_side() {
        let mut r = JobSpec::from_value(&json!({"brief": {"topic": "T"}})).expect("valid").render_spec;
        r.res = Resolution::P480;
        assert_eq!(r.frame_size(Aspect::Widescreen), (854, 480));
        assert_eq!(r.frame_size(Aspect::Vertical), (480, 854));
        r.res = Resolution::P2160;
        assert_eq!(r.frame_size(Aspect::Widescreen), (3840, 2160));
    }

    #[test]
    fn durations_parse_strictly() {
        assert_eq!(hms::parse("00:01:00"), Some(60));
        assert_eq!(hms::parse("00:00:60"), None);
        assert_eq!(hms::parse("1:2"), None);
        assert_eq!(hms::parse("aa:00:00"), None);
        assert_eq!(hms::format(61), "00:01:01");
    }

    #[test]
    fn a_non_object_body_is_invalid_not_malformed() {
        assert_eq!(errors(json!([1, 2])), ["$"]);
        assert!(matches!(JobSpec::from_json_bytes(b"{"), Err(SpecError::Malformed(_))));
    }
}
