use burn::backend::ndarray::NdArrayDevice;
use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use std::time::Instant;
fn main() {
    let d = NdArrayDevice::Cpu;
    for (m, k, n) in [
        (128usize, 576usize, 1536usize),
        (128, 1536, 576),
        (512, 576, 1536),
        (128, 576, 576),
        (128, 576, 192),
    ] {
        let w = Tensor::<NdArray, 2>::from_data(TensorData::new(vec![0.001f32; k * n], [k, n]), &d);
        let x = Tensor::<NdArray, 2>::from_data(TensorData::new(vec![1f32; m * k], [m, k]), &d);
        let mut ts = vec![];
        for _ in 0..7 {
            let t = Instant::now();
            for _ in 0..20 {
                std::hint::black_box(ddp::backend::cpu_matmul::matmul(&x, &w).unwrap());
            }
            ts.push(t.elapsed().as_secs_f64() / 20.0);
        }
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{m}x{k}x{n}: {:.1} GFLOP/s",
            2.0 * (m * k * n) as f64 / ts[3] / 1e9
        );
    }
}
