use std::collections::HashMap;
use std::fmt::Write;

use super::{Counters, Gpu, Tensor};

/// One WGSL file. Its module's source is assembled when the pipeline is built
/// (`Kernel::source`): a prelude of the constants it shares with Rust, each written from
/// its Rust definition (so the two sides cannot drift apart), then `shaders/common.wgsl`,
/// then the file itself.
pub struct Kernel {
    pub name: &'static str,
    /// `shaders/<name>.wgsl` as written.
    pub file: &'static str,
    /// The kernel's own shared constants (`kernel!`'s list), after `SHARED`.
    pub consts: &'static [(&'static str, u32)],
    /// WGSL libraries (helper functions, no entry points) placed after common.wgsl and
    /// before the file, e.g. the in-kernel dequantizers of a compact weight operand.
    pub includes: &'static [&'static str],
    /// WGSL `enable` directives, which must open the module (`"enable f16;"` for a
    /// shader-f16 variant; empty for the f32 kernels every adapter runs).
    pub enable: &'static str,
}

/// The constants every kernel sees, common.wgsl's included.
const SHARED: &[(&str, u32)] = &[("WG", super::WG), ("ACCUMULATE", super::ACCUMULATE)];

const COMMON: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common.wgsl"));

impl Kernel {
    /// The WGSL the shader module is built from: the `enable` directives, `const NAME: u32
    /// = value;` for each shared constant, common.wgsl, the includes, the kernel file.
    pub fn source(&self) -> String {
        let mut s = format!("{}\n// Constants shared with Rust, written from their Rust definitions.\n", self.enable);
        for (name, value) in SHARED.iter().chain(self.consts) {
            let _ = writeln!(s, "const {name}: u32 = {value}u;");
        }
        s += COMMON;
        for inc in self.includes {
            s += inc;
        }
        s + self.file
    }
}

/// Declare a kernel from `shaders/<name>.wgsl`, with the Rust `u32` constants (in scope
/// by these names) that the shader uses under the same names:
/// `kernel!(ATTENTION, "attention", BLOCK, TILE_VEC)`.
#[macro_export]
macro_rules! kernel {
    ($ident:ident, $name:literal $(, $c:ident)* $(,)?) => {
        pub const $ident: $crate::gpu::Kernel = $crate::gpu::Kernel {
            name: $name,
            file: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $name, ".wgsl")),
            consts: &[$((stringify!($c), $c)),*],
            includes: &[],
            enable: "",
        };
    };
}

/// A storage binding: read-only or read-write. Binding 0 of every kernel is its uniform
/// parameter struct; the arguments follow from binding 1 in order.
#[derive(Clone, Copy)]
pub enum Arg<'a> {
    R(&'a Tensor),
    W(&'a Tensor),
}

/// WebGPU's rule for one dispatch (Chromium enforces it; native wgpu does not): a buffer
/// range bound writable overlaps no other binding, read-only or writable.
fn no_writable_alias(args: &[Arg]) -> bool {
    let spans: Vec<Span> = args
        .iter()
        .map(|a| match a {
            Arg::R(t) | Arg::W(t) => (t.id, t.offset, t.offset + 4 * t.len.max(1) as u64, matches!(a, Arg::W(_))),
        })
        .collect();
    spans_disjoint_where_written(&spans)
}

/// A binding's (buffer id, first byte, end byte, writable).
type Span = (u64, u64, u64, bool);

fn spans_disjoint_where_written(spans: &[Span]) -> bool {
    spans.iter().enumerate().all(|(i, &(id, lo, hi, w))| {
        spans[i + 1..].iter().all(|&(id2, lo2, hi2, w2)| !(id == id2 && (w || w2) && lo < hi2 && lo2 < hi))
    })
}

#[cfg(test)]
mod alias_tests {
    use super::spans_disjoint_where_written as ok;

    #[test]
    fn a_writable_binding_may_not_overlap_another() {
        // One buffer read twice, or written and read in disjoint ranges: allowed.
        assert!(ok(&[(1, 0, 64, false), (1, 0, 64, false)]));
        assert!(ok(&[(1, 0, 256, true), (1, 256, 512, false), (2, 0, 64, true)]));
        // The matmul's old c2 = c, and a read overlapping a write by one element: rejected.
        assert!(!ok(&[(1, 0, 64, true), (2, 0, 16, false), (1, 0, 64, true)]));
        assert!(!ok(&[(1, 0, 260, true), (1, 256, 512, false)]));
    }
}

/// The work of one dispatch, for the benchmark's GFLOP/s and GB/s.
#[derive(Clone, Copy, Default, Debug)]
pub struct Cost {
    pub flops: u64,
    pub bytes: u64,
}

/// Time, FLOPs and bytes per kernel entry point (native benchmark only).
#[derive(Default, Debug, Clone)]
pub struct Profile {
    pub entries: HashMap<String, ProfileEntry>,
}

#[derive(Default, Debug, Clone)]
pub struct ProfileEntry {
    pub calls: u64,
    pub seconds: f64,
    pub flops: u64,
    pub bytes: u64,
}

/// Records dispatches into one compute pass (WebGPU orders dispatches within a pass, so one
/// pass per step is enough; a buffer copy or clear ends it, the next dispatch opens another)
/// and submits them together.
pub struct Encoder<'g> {
    gpu: &'g Gpu,
    enc: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    /// When set, every dispatch is submitted and waited for alone and timed (native only).
    pub profile: Option<Profile>,
    pub dispatches: u64,
    /// Reuse bind groups across dispatches and steps (`Gpu::bind_groups`): for an owner
    /// whose buffers persist (the trainer), which forgets them when it frees those.
    pub cache_binds: bool,
    /// Submit after this many dispatches (0: only when asked), so the GPU starts on the
    /// first layers while the CPU still encodes the rest. Queue order is submission order,
    /// so the results are the same bits either way.
    pub submit_every: u64,
    since_submit: u64,
}

/// (pipeline key, parameter bytes, (buffer id, offset, size) of each argument).
pub(crate) type BindKey = (String, Vec<u8>, Vec<(u64, u64, usize)>);

/// Entries beyond which the bind-group cache starts over (a backstop: per-step parameters
/// such as a dropout salt add entries every step).
const MAX_BIND_GROUPS: usize = 16384;

impl<'g> Encoder<'g> {
    pub fn new(gpu: &'g Gpu) -> Self {
        Encoder {
            gpu,
            enc: None,
            pass: None,
            profile: None,
            dispatches: 0,
            cache_binds: false,
            submit_every: 0,
            since_submit: 0,
        }
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        if self.enc.is_none() {
            self.enc = Some(self.gpu.device.create_command_encoder(&Default::default()));
        }
        self.enc.as_mut().unwrap()
    }

    fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        if self.pass.is_none() {
            let pass = self.encoder().begin_compute_pass(&Default::default()).forget_lifetime();
            self.pass = Some(pass);
        }
        self.pass.as_mut().unwrap()
    }

    fn end_pass(&mut self) {
        self.pass = None;
    }

    /// Dispatch `entry` of kernel `k` over `grid` workgroups.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        k: &Kernel,
        entry: &str,
        params: &P,
        args: &[Arg],
        grid: [u32; 3],
        cost: Cost,
    ) {
        if grid.contains(&0) {
            return;
        }
        #[cfg(not(target_arch = "wasm32"))]
        let t0 = std::time::Instant::now();
        let gpu = self.gpu;
        // An unused writable binding (the dummy bound W) gets its binding's own spare, so
        // that it aliases nothing else the dispatch binds.
        let spared: Vec<Arg> = args
            .iter()
            .enumerate()
            .map(|(i, a)| match a {
                Arg::W(t) if t.id == gpu.dummy.id => Arg::W(gpu.spare.get(i).unwrap_or(t)),
                a => *a,
            })
            .collect();
        let args = &spared[..];
        debug_assert!(no_writable_alias(args), "{}.{entry}: a writable binding overlaps another binding", k.name);
        let sig: String = args.iter().map(|a| if matches!(a, Arg::R(_)) { 'r' } else { 'w' }).collect();
        let key = format!("{}:{}:{}", k.name, entry, sig);
        let (pipeline, layout) = {
            let mut cache = gpu.pipelines.lock().unwrap();
            cache.entry(key.clone()).or_insert_with(|| build_pipeline(gpu, k, entry, args)).clone()
        };
        let make = || {
            let ubuf = gpu.uniform(bytemuck::bytes_of(params));
            let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: ubuf.as_entire_binding() }];
            for (i, a) in args.iter().enumerate() {
                let t = match a {
                    Arg::R(t) | Arg::W(t) => t,
                };
                entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: t.binding() });
            }
            Counters::add(&gpu.counters.bind_groups, 1);
            gpu.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &entries })
        };
        let bind = if self.cache_binds {
            let tensors = args
                .iter()
                .map(|a| match a {
                    Arg::R(t) | Arg::W(t) => (t.id, t.offset, t.len),
                })
                .collect();
            let bkey: BindKey = (key, bytemuck::bytes_of(params).to_vec(), tensors);
            let mut cache = gpu.bind_groups.lock().unwrap();
            if cache.len() >= MAX_BIND_GROUPS && !cache.contains_key(&bkey) {
                cache.clear();
            }
            cache.entry(bkey).or_insert_with(make).clone()
        } else {
            make()
        };
        self.dispatches += 1;
        let pass = self.pass();
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        let c = &gpu.counters;
        Counters::add(&c.dispatches, 1);
        #[cfg(not(target_arch = "wasm32"))]
        Counters::add(&c.encode_ns, t0.elapsed().as_nanos() as u64);
        if self.profile.is_some() {
            self.profile_flush(&format!("{}.{}", k.name, entry), cost);
        }
        self.since_submit += 1;
        if self.submit_every > 0 && self.since_submit >= self.submit_every {
            self.submit();
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn profile_flush(&mut self, label: &str, cost: Cost) {
        let t0 = std::time::Instant::now();
        self.submit();
        let _ = self.gpu.device.poll(wgpu::PollType::wait_indefinitely());
        let dt = t0.elapsed().as_secs_f64();
        let e = self.profile.as_mut().unwrap().entries.entry(label.to_string()).or_default();
        e.calls += 1;
        e.seconds += dt;
        e.flops += cost.flops;
        e.bytes += cost.bytes;
    }

    #[cfg(target_arch = "wasm32")]
    fn profile_flush(&mut self, _label: &str, _cost: Cost) {}

    /// Copy `src` into the start of `dst` (ends the current pass).
    pub fn copy(&mut self, src: &Tensor, dst: &Tensor) {
        assert!(src.len <= dst.len);
        if src.len == 0 {
            return;
        }
        self.end_pass();
        let (sb, so, db, dof, n) = (src.buf.clone(), src.offset, dst.buf.clone(), dst.offset, src.bytes());
        self.encoder().copy_buffer_to_buffer(&sb, so, &db, dof, n);
    }

    /// Zero a tensor (ends the current pass; used once per step for the gradients).
    pub fn clear(&mut self, t: &Tensor) {
        if t.len == 0 {
            return;
        }
        self.end_pass();
        let (b, o, n) = (t.buf.clone(), t.offset, t.bytes());
        self.encoder().clear_buffer(&b, o, Some(n));
    }

    /// Copy `src` to `dst` at an element offset (4-byte aligned copies need no binding
    /// alignment), e.g. to collect each micro-batch's losses for one readback.
    pub fn copy_at(&mut self, src: &Tensor, dst: &Tensor, dst_start: usize) {
        assert!(dst_start + src.len <= dst.len);
        if src.len == 0 {
            return;
        }
        self.end_pass();
        let (sb, so, db, n) = (src.buf.clone(), src.offset, dst.buf.clone(), src.bytes());
        self.encoder().copy_buffer_to_buffer(&sb, so, &db, dst.offset + dst_start as u64 * 4, n);
    }

    /// Record a copy into a host-mappable buffer (for readback).
    pub(crate) fn copy_to_staging(&mut self, src: &Tensor, staging: &wgpu::Buffer) {
        self.end_pass();
        let (sb, so, n) = (src.buf.clone(), src.offset, src.bytes());
        self.encoder().copy_buffer_to_buffer(&sb, so, staging, 0, n);
    }

    /// Submit everything recorded so far.
    pub fn submit(&mut self) {
        self.end_pass();
        self.since_submit = 0;
        if let Some(enc) = self.enc.take() {
            Counters::add(&self.gpu.counters.submits, 1);
            self.gpu.queue.submit([enc.finish()]);
        }
    }
}

impl Drop for Encoder<'_> {
    fn drop(&mut self) {
        self.submit();
    }
}

fn build_pipeline(gpu: &Gpu, k: &Kernel, entry: &str, args: &[Arg]) -> (wgpu::ComputePipeline, wgpu::BindGroupLayout) {
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }];
    for (i, a) in args.iter().enumerate() {
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: i as u32 + 1,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: matches!(a, Arg::R(_)) },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    let bgl = gpu
        .device
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(k.name), entries: &entries });
    let layout = gpu.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(k.name),
        bind_group_layouts: &[Some(&bgl)],
        immediate_size: 0,
    });
    let module = shader_module(gpu, k);
    let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: Some(&layout),
        module: &module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    });
    (pipeline, bgl)
}

fn shader_module(gpu: &Gpu, k: &Kernel) -> wgpu::ShaderModule {
    gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(k.name),
        source: wgpu::ShaderSource::Wgsl(k.source().into()),
    })
}

/// Compile `k` on this device and return the compiler's complaint, if any. Backends differ
/// (naga natively, Tint in Chromium), so tests run this for every kernel on each.
pub async fn compile_error(gpu: &Gpu, k: &Kernel) -> Option<String> {
    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let _module = shader_module(gpu, k);
    scope.pop().await.map(|e| format!("{}.wgsl: {e}", k.name))
}
