//! The README's example, as a user copies it, with the CPU path where there is no GPU: built from the
//! packaged crates on stable Rust, it shows that the kernels' source travels with the package (the build
//! compiles it to PTX) and that a consumer needs nothing beyond `ironflash`.

use ironflash::{bf16, cpu, gpu, AttnOptions, Device, Error, HostTensor};

fn main() -> Result<(), Error> {
    let q = HostTensor::<bf16>::random_seeded([1, 256, 4, 128], 1.0, 1);
    let k = HostTensor::<bf16>::random_seeded([1, 256, 2, 128], 1.0, 2); // GQA: 2 K/V heads for 4 query heads
    let v = HostTensor::<bf16>::random_seeded([1, 256, 2, 128], 1.0, 3);
    let cpu_out = cpu::forward(&q, &k, &v, &AttnOptions::causal())?;
    match Device::open(0) {
        Ok(dev) => {
            let (qd, kd, vd) = (dev.upload(&q)?, dev.upload(&k)?, dev.upload(&v)?);
            let out = gpu::flash_forward(&dev, &qd, &kd, &vd, &AttnOptions::causal())?;
            let o = dev.download(&out.o)?;
            let diff = o.data.iter().zip(&cpu_out.o.data).map(|(a, b)| (a.to_f32() - b.to_f32()).abs()).fold(0.0, f32::max);
            println!("consumer: GPU forward on {}, max |GPU - CPU| = {diff:.2e}", dev.info().name);
        }
        Err(Error::NoDriver(why)) => println!("consumer: no GPU ({why}); CPU forward, O {:?}", cpu_out.o.shape()),
        Err(e) => return Err(e),
    }
    Ok(())
}
