//! Typed stage parameters: one declaration per stage kind gives both the struct a stage reads
//! and the [`ParamSpec`] list the recipe checker, `explain` and keys use, so a parameter's name,
//! type, default and meaning are written once (see [`stage_params!`](crate::stage_params)).

use serde::de::DeserializeOwned;
use toml::Value;

use super::stage::{ParamSpec, ParamType, Params};

/// A stage kind's parameters as one typed struct.
pub trait StageParams: DeserializeOwned {
    /// The declared parameters, in declaration order.
    fn specs() -> Vec<ParamSpec>;

    /// Reads resolved parameters (defaults filled in, values checked) into the struct; `instance`
    /// names the stage in the error.
    fn from_params(params: &Params, instance: &str) -> Result<Self, super::Error> {
        let table: toml::Table = params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Value::Table(table)
            .try_into()
            .map_err(|e| super::Error::Params {
                instance: instance.to_string(),
                what: e.to_string(),
            })
    }
}

/// A parameter whose value is one of a fixed set of names (a Rust enum in the struct).
pub trait Choice {
    /// The accepted names, as a recipe writes them.
    const NAMES: &'static [&'static str];
}

/// An integer in `[min, i64::MAX]`.
pub fn int(min: i64) -> ParamType {
    ParamType::Int { min, max: i64::MAX }
}

/// An integer in `[min, max]`.
pub fn int_in(min: i64, max: i64) -> ParamType {
    ParamType::Int { min, max }
}

/// A number in `[min, max]`.
pub fn float(min: f64, max: f64) -> ParamType {
    ParamType::Float { min, max }
}

/// One of the names of the choice enum `C`.
pub fn choice<C: Choice>() -> ParamType {
    ParamType::Choice(C::NAMES)
}

/// Declares a stage kind's parameters once: a `Deserialize` struct whose fields are the
/// parameters, and its [`StageParams::specs`]. Each field is written
///
/// ```text
/// /// meaning, as `explain` shows it (one line)
/// name: RustType [= default] => parameter type,
/// ```
///
/// where the default is anything `toml::Value::from` takes (no default: required) and the
/// parameter type a [`ParamType`] expression (see [`int`], [`float`], [`choice`]).
#[macro_export]
macro_rules! stage_params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                $field:ident : $ty:ty $(= $default:expr)? => $pty:expr
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        $vis struct $name {
            $(
                $(#[doc = $doc])+
                pub $field: $ty,
            )*
        }

        impl $crate::engine::params::StageParams for $name {
            fn specs() -> Vec<$crate::engine::stage::ParamSpec> {
                vec![$(
                    $crate::engine::stage::ParamSpec {
                        name: stringify!($field),
                        ty: $pty,
                        default: $crate::stage_params!(@default $($default)?),
                        doc: concat!($($doc),+).trim(),
                    },
                )*]
            }
        }
    };
    (@default) => { None };
    (@default $d:expr) => { Some(toml::Value::from($d)) };
}

/// Declares a choice enum: `Deserialize` from the given names, [`Choice::NAMES`], `Display`.
#[macro_export]
macro_rules! choice_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[doc = $doc:literal])+ $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
        $vis enum $name {
            $( $(#[doc = $doc])+ #[serde(rename = $text)] $variant, )+
        }

        impl $crate::engine::params::Choice for $name {
            const NAMES: &'static [&'static str] = &[$($text),+];
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self { $(Self::$variant => $text),+ })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::choice_enum! {
        /// A test choice.
        pub enum Mode {
            /// First.
            Fast = "fast",
            /// Second.
            Exact = "exact-ish",
        }
    }

    crate::stage_params! {
        /// Test parameters.
        pub struct P {
            /// steps to take
            steps: usize = 30 => int(1),
            /// the learning rate
            lr: f64 = 0.5 => float(0.0, 10.0),
            /// how
            mode: Mode = "fast" => choice::<Mode>(),
            /// required text
            data: String => ParamType::Str,
            /// lens
            lens: Vec<usize> = vec![128, 512] => ParamType::IntList { min: 1, max: 9 },
        }
    }

    #[test]
    fn one_declaration_gives_specs_and_a_typed_struct() {
        let specs = P::specs();
        let names: Vec<_> = specs.iter().map(|s| s.name).collect();
        assert_eq!(names, ["steps", "lr", "mode", "data", "lens"]);
        assert_eq!(specs[0].doc, "steps to take");
        assert_eq!(specs[0].default, Some(Value::Integer(30)));
        assert_eq!(specs[2].ty, ParamType::Choice(&["fast", "exact-ish"]));
        assert_eq!(specs[3].default, None);
        let mut params: Params = specs
            .iter()
            .filter_map(|s| Some((s.name.to_string(), s.default.clone()?)))
            .collect();
        params.insert("data".into(), Value::String("x.txt".into()));
        params.insert("mode".into(), Value::String("exact-ish".into()));
        let p = P::from_params(&params, "s").unwrap();
        assert_eq!((p.steps, p.lr, p.mode), (30, 0.5, Mode::Exact));
        assert_eq!((p.data.as_str(), p.lens), ("x.txt", vec![128, 512]));
        assert_eq!(Mode::Exact.to_string(), "exact-ish");
        params.remove("data");
        let e = P::from_params(&params, "s").unwrap_err().to_string();
        assert!(e.contains("stage s") && e.contains("data"), "{e}");
    }
}
