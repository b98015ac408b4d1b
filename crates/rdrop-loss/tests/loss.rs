//! Checks the criteria against the PyTorch/fairseq reference in fixtures/rdrop_cases.json
//! (written by scripts/make_loss_fixtures.py), against finite differences, and against the
//! properties R-Drop must have.

use candle_core::{DType, Device, Tensor, Var};
use rdrop_loss::{
    duplicate, duplicate_all, label_smoothed_ce, label_smoothed_nll_loss, rdrop_loss, split_halves,
    CriterionConfig, LossError, LossParts,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixtures {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    eps: f64,
    alpha: f64,
    pad_id: u32,
    dtype: String,
    logits_shape: Vec<usize>,
    logits: Vec<f32>,
    target: Vec<u32>,
    lengths: Option<Vec<usize>>,
    expected: Expected,
    grad_logits: Option<Vec<f64>>,
}

#[derive(Deserialize)]
struct Expected {
    loss: f64,
    loss_sum: f64,
    ce_sum: Vec<f64>,
    nll_sum: Vec<f64>,
    kl_sum: f64,
    ntokens: usize,
}

fn fixtures() -> Fixtures {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rdrop_cases.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture file is committed");
    serde_json::from_str(&text).expect("fixture parses")
}

impl Case {
    fn logits(&self, dtype: DType) -> Tensor {
        Tensor::from_vec(
            self.logits.clone(),
            self.logits_shape.as_slice(),
            &Device::Cpu,
        )
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
    }
    fn input_dtype(&self) -> DType {
        match self.dtype.as_str() {
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            _ => DType::F32,
        }
    }
    fn batch(&self) -> usize {
        self.logits_shape[0] / 2
    }
    fn target(&self) -> Tensor {
        let t = self.logits_shape[1];
        Tensor::from_vec(self.target.clone(), (self.batch(), t), &Device::Cpu).unwrap()
    }
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Relative tolerance with an absolute floor of `tol` near zero.
fn assert_close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1.0),
        "{what}: got {got}, want {want} (diff {:e})",
        (got - want).abs()
    );
}

fn check_parts(name: &str, parts: &LossParts, e: &Expected, tol: f64) {
    assert_eq!(parts.ntokens, e.ntokens, "{name}: ntokens");
    assert_close(&format!("{name} loss"), scalar(&parts.loss), e.loss, tol);
    assert_close(
        &format!("{name} loss_sum"),
        scalar(&parts.loss_sum),
        e.loss_sum,
        tol,
    );
    for k in 0..2 {
        assert_close(
            &format!("{name} ce_sum[{k}]"),
            scalar(&parts.ce_sum[k]),
            e.ce_sum[k],
            tol,
        );
        assert_close(
            &format!("{name} nll_sum[{k}]"),
            scalar(&parts.nll_sum[k]),
            e.nll_sum[k],
            tol,
        );
    }
    let kl = parts.kl_sum.as_ref().expect("R-Drop reports its KL");
    assert_close(&format!("{name} kl_sum"), scalar(kl), e.kl_sum, tol);
}

#[test]
fn rdrop_matches_pytorch_reference_for_all_alpha_and_eps() {
    let fx = fixtures();
    assert!(fx.cases.len() >= 9);
    for case in &fx.cases {
        let logits = case.logits(case.input_dtype());
        let parts = rdrop_loss(&logits, &case.target(), case.pad_id, case.eps, case.alpha).unwrap();
        // Half-precision inputs (exactly representable in the fixture) are computed in f32.
        assert_eq!(parts.loss.dtype(), DType::F32, "{}", case.name);
        check_parts(&case.name, &parts, &case.expected, 1e-5);
    }
}

#[test]
fn label_smoothed_ce_matches_reference_on_one_copy() {
    for case in &fixtures().cases {
        let (copy1, copy2) = split_halves(&case.logits(case.input_dtype())).unwrap();
        for (k, copy) in [copy1, copy2].iter().enumerate() {
            let s = label_smoothed_nll_loss(copy, &case.target(), case.pad_id, case.eps).unwrap();
            assert_eq!(s.ntokens, case.expected.ntokens);
            assert_close(
                &case.name,
                scalar(&s.loss_sum),
                case.expected.ce_sum[k],
                1e-5,
            );
            assert_close(
                &case.name,
                scalar(&s.nll_sum),
                case.expected.nll_sum[k],
                1e-5,
            );
        }
    }
}

#[test]
fn gradient_matches_pytorch_reference() {
    let fx = fixtures();
    let case = fx
        .cases
        .iter()
        .find(|c| c.grad_logits.is_some())
        .expect("a gradient case");
    let want = case.grad_logits.as_ref().unwrap();
    let var = Var::from_tensor(&case.logits(DType::F32)).unwrap();
    let parts = rdrop_loss(
        var.as_tensor(),
        &case.target(),
        case.pad_id,
        case.eps,
        case.alpha,
    )
    .unwrap();
    let grads = parts.loss.backward().unwrap();
    let got: Vec<f32> = grads
        .get(&var)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got.len(), want.len());
    let mut max_diff = 0f64;
    for (g, w) in got.iter().zip(want) {
        max_diff = max_diff.max((*g as f64 - w).abs());
    }
    assert!(max_diff < 1e-5, "max |grad - reference| = {max_diff:e}");
}

#[test]
fn gradient_matches_finite_differences_in_f64() {
    let fx = fixtures();
    let case = &fx
        .cases
        .iter()
        .find(|c| c.name == "alpha5.0_eps0.1")
        .unwrap();
    let target = case.target();
    let (eps, alpha, pad) = (case.eps, case.alpha, case.pad_id);
    let base: Vec<f64> = case.logits.iter().map(|&x| x as f64).collect();
    let shape = case.logits_shape.clone();
    let loss_at = |values: &[f64]| -> f64 {
        let logits = Tensor::from_vec(values.to_vec(), shape.as_slice(), &Device::Cpu).unwrap();
        scalar(&rdrop_loss(&logits, &target, pad, eps, alpha).unwrap().loss)
    };
    let var =
        Var::from_tensor(&Tensor::from_vec(base.clone(), shape.as_slice(), &Device::Cpu).unwrap())
            .unwrap();
    let parts = rdrop_loss(var.as_tensor(), &target, pad, eps, alpha).unwrap();
    assert_eq!(parts.loss.dtype(), DType::F64);
    let grad: Vec<f64> = parts
        .loss
        .backward()
        .unwrap()
        .get(&var)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();

    let (t, v) = (shape[1], shape[2]);
    let b = shape[0] / 2;
    // Gold and non-gold entries of both copies, and a padding position (gradient exactly 0).
    let last_row_len = case.lengths.as_ref().unwrap()[b - 1];
    let coords = [
        (0, 0, case.target[0] as usize),
        (0, 2, 5),
        (1, 3, 0),
        (b, 0, 7),
        (b + 1, 1, case.target[t + 1] as usize),
        (2 * b - 1, 0, 3),
        (2 * b - 1, last_row_len, 4),
    ];
    let h = 1e-5;
    for (row, pos, voc) in coords {
        let i = (row * t + pos) * v + voc;
        let mut plus = base.clone();
        plus[i] += h;
        let mut minus = base.clone();
        minus[i] -= h;
        let fd = (loss_at(&plus) - loss_at(&minus)) / (2.0 * h);
        assert!(
            (grad[i] - fd).abs() < 1e-7,
            "d loss / d logits[{row},{pos},{voc}]: autograd {} vs finite difference {fd}",
            grad[i]
        );
    }
    assert_eq!(
        grad[((2 * b - 1) * t + last_row_len) * v + 4],
        0.0,
        "padding gets no gradient"
    );
}

#[test]
fn alpha_zero_is_label_smoothed_ce_on_the_doubled_batch() {
    for case in fixtures().cases.iter().filter(|c| c.dtype == "f32") {
        let logits = case.logits(DType::F32);
        let target = case.target();
        let r = rdrop_loss(&logits, &target, case.pad_id, case.eps, 0.0).unwrap();
        let ce = label_smoothed_ce(&logits, &duplicate(&target).unwrap(), case.pad_id, case.eps)
            .unwrap();
        assert_eq!(ce.ntokens, 2 * r.ntokens);
        assert_close("loss_sum", scalar(&r.loss_sum), scalar(&ce.loss_sum), 1e-6);
        // R-Drop divides by the original batch's tokens, the plain CE by the doubled batch's.
        assert_close("loss", scalar(&r.loss), 2.0 * scalar(&ce.loss), 1e-6);
    }
}

#[test]
fn identical_halves_give_exactly_zero_kl() {
    for case in &fixtures().cases {
        let (copy1, _) = split_halves(&case.logits(case.input_dtype())).unwrap();
        let doubled = duplicate(&copy1).unwrap();
        let parts =
            rdrop_loss(&doubled, &case.target(), case.pad_id, case.eps, case.alpha).unwrap();
        assert_eq!(scalar(parts.kl_sum.as_ref().unwrap()), 0.0, "{}", case.name);
        assert_eq!(
            scalar(&parts.ce_sum[0]),
            scalar(&parts.ce_sum[1]),
            "{}",
            case.name
        );
    }
}

#[test]
fn padded_batch_equals_the_sum_of_its_sentences_alone() {
    for case in fixtures()
        .cases
        .iter()
        .filter(|c| c.lengths.is_some() && c.dtype == "f32")
    {
        let logits = case.logits(DType::F32);
        let target = case.target();
        let whole = rdrop_loss(&logits, &target, case.pad_id, case.eps, case.alpha).unwrap();
        let b = case.batch();
        let (mut loss_sum, mut ce0, mut ce1, mut kl, mut n) = (0.0, 0.0, 0.0, 0.0, 0);
        for (i, &len) in case.lengths.as_ref().unwrap().iter().enumerate() {
            let rows = Tensor::cat(
                &[
                    logits.narrow(0, i, 1).unwrap(),
                    logits.narrow(0, b + i, 1).unwrap(),
                ],
                0,
            )
            .unwrap();
            let alone = rdrop_loss(
                &rows.narrow(1, 0, len).unwrap(),
                &target.narrow(0, i, 1).unwrap().narrow(1, 0, len).unwrap(),
                case.pad_id,
                case.eps,
                case.alpha,
            )
            .unwrap();
            assert_eq!(alone.ntokens, len);
            loss_sum += scalar(&alone.loss_sum);
            ce0 += scalar(&alone.ce_sum[0]);
            ce1 += scalar(&alone.ce_sum[1]);
            kl += scalar(alone.kl_sum.as_ref().unwrap());
            n += alone.ntokens;
        }
        assert_eq!(n, whole.ntokens);
        assert_close("loss_sum", loss_sum, scalar(&whole.loss_sum), 1e-6);
        assert_close("ce copy 1", ce0, scalar(&whole.ce_sum[0]), 1e-6);
        assert_close("ce copy 2", ce1, scalar(&whole.ce_sum[1]), 1e-6);
        assert_close("kl", kl, scalar(whole.kl_sum.as_ref().unwrap()), 1e-6);
    }
}

#[test]
fn garbage_at_padding_positions_does_not_reach_the_loss() {
    let fx = fixtures();
    let case = fx
        .cases
        .iter()
        .find(|c| c.name == "alpha5.0_eps0.1")
        .unwrap();
    let (b, t, v) = (case.batch(), case.logits_shape[1], case.logits_shape[2]);
    let last_len = case.lengths.as_ref().unwrap()[b - 1];
    let mut values = case.logits.clone();
    for row in [b - 1, 2 * b - 1] {
        for voc in 0..v {
            values[(row * t + last_len) * v + voc] = if voc % 2 == 0 {
                f32::INFINITY
            } else {
                f32::NAN
            };
        }
    }
    let logits = Tensor::from_vec(values, case.logits_shape.as_slice(), &Device::Cpu).unwrap();
    let parts = rdrop_loss(&logits, &case.target(), case.pad_id, case.eps, case.alpha).unwrap();
    check_parts("garbage at pads", &parts, &case.expected, 1e-5);
}

#[test]
fn half_precision_logits_give_the_f32_result() {
    let fx = fixtures();
    for case in fx.cases.iter().filter(|c| c.dtype != "f32") {
        let half = case.logits(case.input_dtype());
        let full = case.logits(DType::F32);
        let a = rdrop_loss(&half, &case.target(), case.pad_id, case.eps, case.alpha).unwrap();
        let b = rdrop_loss(&full, &case.target(), case.pad_id, case.eps, case.alpha).unwrap();
        assert_eq!(a.loss.dtype(), DType::F32);
        assert_eq!(scalar(&a.loss_sum), scalar(&b.loss_sum), "{}", case.name);
        // Gradients reach half-precision logits through the upcast.
        let var = Var::from_tensor(&half).unwrap();
        let parts = rdrop_loss(
            var.as_tensor(),
            &case.target(),
            case.pad_id,
            case.eps,
            case.alpha,
        )
        .unwrap();
        let g = parts.loss.backward().unwrap();
        assert_eq!(g.get(&var).unwrap().dtype(), case.input_dtype());
    }
}

#[test]
fn duplicate_stacks_blocks_and_split_inverts_it() {
    let x = Tensor::new(&[[1u32, 2], [3, 4], [5, 6]], &Device::Cpu).unwrap();
    let before: Vec<Vec<u32>> = x.to_vec2().unwrap();
    let d = duplicate(&x).unwrap();
    assert_eq!(
        d.to_vec2::<u32>().unwrap(),
        vec![
            vec![1, 2],
            vec![3, 4],
            vec![5, 6],
            vec![1, 2],
            vec![3, 4],
            vec![5, 6]
        ]
    );
    assert_eq!(x.to_vec2::<u32>().unwrap(), before);
    let (a, b) = split_halves(&d).unwrap();
    assert_eq!(a.to_vec2::<u32>().unwrap(), before);
    assert_eq!(b.to_vec2::<u32>().unwrap(), before);
    let mask = Tensor::new(&[1u8, 1, 0], &Device::Cpu).unwrap();
    let all = duplicate_all(&[&x, &mask]).unwrap();
    assert_eq!(all[1].to_vec1::<u8>().unwrap(), vec![1, 1, 0, 1, 1, 0]);
}

#[test]
fn criteria_from_config() {
    let fx = fixtures();
    let case = fx
        .cases
        .iter()
        .find(|c| c.name == "alpha0.7_eps0.1")
        .unwrap();
    let logits = case.logits(DType::F32);
    let rdrop = CriterionConfig::RDrop {
        eps: case.eps,
        alpha: case.alpha,
    }
    .build(case.pad_id)
    .unwrap();
    assert!(rdrop.needs_doubled_batch());
    check_parts(
        "config R-Drop",
        &rdrop.loss(&logits, &case.target()).unwrap(),
        &case.expected,
        1e-5,
    );

    let ce = CriterionConfig::LabelSmoothedCe { eps: case.eps }
        .build(case.pad_id)
        .unwrap();
    assert!(!ce.needs_doubled_batch());
    let (copy1, _) = split_halves(&logits).unwrap();
    let parts = ce.loss(&copy1, &case.target()).unwrap();
    let values = parts.values().unwrap();
    let n = case.expected.ntokens as f64;
    assert_eq!(values.ntokens, case.expected.ntokens);
    assert_close("ce loss", values.loss, case.expected.ce_sum[0] / n, 1e-5);
    assert_close(
        "ce per token",
        values.ce[0],
        case.expected.ce_sum[0] / n,
        1e-5,
    );
    assert_close(
        "nll per token",
        values.nll[0],
        case.expected.nll_sum[0] / n,
        1e-5,
    );
    assert_eq!(values.kl, None);

    let v = rdrop
        .loss(&logits, &case.target())
        .unwrap()
        .values()
        .unwrap();
    assert_close(
        "kl per token",
        v.kl.unwrap(),
        case.expected.kl_sum / n,
        1e-5,
    );

    assert!(matches!(
        CriterionConfig::RDrop {
            eps: 0.1,
            alpha: -1.0
        }
        .build(1),
        Err(LossError::BadAlpha(_))
    ));
    assert!(matches!(
        CriterionConfig::LabelSmoothedCe { eps: 1.0 }.build(1),
        Err(LossError::BadEpsilon { .. })
    ));
}

#[test]
fn bad_shapes_and_dtypes_give_typed_errors_naming_the_shapes() {
    let dev = Device::Cpu;
    let logits = Tensor::zeros((6, 4, 5), DType::F32, &dev).unwrap();
    let target = Tensor::ones((3, 4), DType::U32, &dev).unwrap();

    let odd = Tensor::zeros((5, 4, 5), DType::F32, &dev).unwrap();
    let e = rdrop_loss(&odd, &target, 0, 0.1, 1.0).unwrap_err();
    assert!(matches!(e, LossError::OddRows { rows: 5, .. }), "{e}");
    assert!(e.to_string().contains("[5, 4, 5]"), "{e}");
    let e = split_halves(&odd).unwrap_err();
    assert!(
        matches!(e, LossError::OddRows { .. }) && e.to_string().contains("[5, 4, 5]"),
        "{e}"
    );

    // The doubled target instead of the original one.
    let doubled = duplicate(&target).unwrap();
    let e = rdrop_loss(&logits, &doubled, 0, 0.1, 1.0).unwrap_err();
    assert!(matches!(e, LossError::ShapeMismatch { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("[6, 4]") && msg.contains("[6, 4, 5]") && msg.contains("[3, 4]"),
        "{msg}"
    );

    let short = Tensor::ones((6, 3), DType::U32, &dev).unwrap();
    let e = label_smoothed_nll_loss(&logits, &short, 0, 0.1).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, LossError::ShapeMismatch { .. })
            && msg.contains("[6, 3]")
            && msg.contains("[6, 4, 5]"),
        "{msg}"
    );

    let float_target = Tensor::ones((3, 4), DType::F32, &dev).unwrap();
    let e = rdrop_loss(&logits, &float_target, 0, 0.1, 1.0).unwrap_err();
    assert!(
        matches!(
            e,
            LossError::TargetDType {
                dtype: DType::F32,
                ..
            }
        ) && e.to_string().contains("[3, 4]"),
        "{e}"
    );

    let int_logits = Tensor::zeros((6, 4, 5), DType::U32, &dev).unwrap();
    let e = rdrop_loss(&int_logits, &target, 0, 0.1, 1.0).unwrap_err();
    assert!(
        matches!(
            e,
            LossError::LogitsDType {
                dtype: DType::U32,
                ..
            }
        ) && e.to_string().contains("[6, 4, 5]"),
        "{e}"
    );

    let flat = Tensor::zeros((6, 20), DType::F32, &dev).unwrap();
    let e = label_smoothed_nll_loss(&flat, &target, 0, 0.1).unwrap_err();
    assert!(
        matches!(e, LossError::LogitsRank { .. }) && e.to_string().contains("[6, 20]"),
        "{e}"
    );

    let big = Tensor::new(&[[1u32, 9, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], &dev).unwrap();
    let e = rdrop_loss(&logits, &big, 0, 0.1, 1.0).unwrap_err();
    assert!(
        matches!(
            e,
            LossError::TargetOutOfRange {
                id: 9,
                vocab: 5,
                ..
            }
        ),
        "{e}"
    );
    // An out-of-vocabulary pad id is fine: pad positions are never looked up.
    let padded = Tensor::new(&[[1u32, 99, 99, 99], [1, 1, 1, 1], [1, 1, 1, 1]], &dev).unwrap();
    assert_eq!(
        rdrop_loss(&logits, &padded, 99, 0.1, 1.0).unwrap().ntokens,
        9
    );
    let negative = Tensor::new(&[[1i64, -3, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], &dev).unwrap();
    let e = rdrop_loss(&logits, &negative, 0, 0.1, 1.0).unwrap_err();
    assert!(
        matches!(e, LossError::TargetOutOfRange { id: -3, .. }),
        "{e}"
    );

    assert!(matches!(
        rdrop_loss(&logits, &target, 0, 1.5, 1.0),
        Err(LossError::BadEpsilon { .. })
    ));
    assert!(matches!(
        rdrop_loss(&logits, &target, 0, 0.1, f64::NAN),
        Err(LossError::BadAlpha(_))
    ));
    let scalar_t = Tensor::new(1f32, &dev).unwrap();
    assert!(matches!(
        duplicate(&scalar_t),
        Err(LossError::NoBatchAxis { .. })
    ));
}

#[test]
fn all_padding_batch_gives_zero_loss_not_nan() {
    let dev = Device::Cpu;
    let logits = Tensor::randn(0f32, 1.0, (4, 3, 5), &dev).unwrap();
    let target = Tensor::zeros((2, 3), DType::U32, &dev).unwrap();
    let parts = rdrop_loss(&logits, &target, 0, 0.1, 5.0).unwrap();
    assert_eq!(parts.ntokens, 0);
    assert_eq!(scalar(&parts.loss), 0.0);
}
