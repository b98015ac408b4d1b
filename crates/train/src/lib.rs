//! Trains Marian-family translation models with R-Drop or label-smoothed cross entropy:
//! recipes, parallel-data pipeline, AdamW with saveable state, the training loop and atomic checkpoints.
//!
//! A run is described by a [`recipe::Recipe`] (TOML; every default lives in its `Default` impls).
//! [`trainer::train`] reads and filters the corpus ([`data`]), batches by token count with length
//! bucketing and a seeded order, steps our own AdamW ([`optim`]), validates (loss + BLEU) and writes
//! resumable, atomic checkpoints ([`checkpoint`]). [`embedded`] is the run `rdrop train` does without
//! a recipe, on the toy corpus of [`synthetic`]. [`average`] and `rdrop convert` write their
//! outputs through [`output`], which never replaces a directory rdrop did not create.
//!
//! ```
//! use rdrop_train::recipe::{CriterionKind, Recipe};
//! let r = Recipe::from_str_with("[criterion]\nalpha = 0.7\n", "example", &["optimizer.lr=3e-5".into()]).unwrap();
//! assert_eq!(r.criterion.kind, CriterionKind::Rdrop);
//! assert_eq!((r.criterion.alpha, r.optimizer.lr), (0.7, 3e-5));
//! assert_eq!(r.optimizer.beta2, 0.98); // a default
//! ```

#![deny(missing_docs)]

pub mod average;
pub mod checkpoint;
pub mod data;
pub mod embedded;
pub mod error;
pub mod init;
pub mod malloc;
pub mod optim;
pub mod output;
pub mod plot;
pub mod prepare;
pub mod recipe;
pub mod resume;
pub mod run;
pub mod runlog;
pub mod session;
pub mod synthetic;
pub mod tensorboard;
pub mod trainer;
pub mod validate;

pub use error::{Error, Result};
