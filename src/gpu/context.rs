use std::collections::HashMap;
use std::sync::Mutex;

use wgpu::util::DeviceExt;

use super::Tensor;
use crate::error::{Error, Result};

/// What the engine knows of the adapter: enough to pick kernel variants and to say in an
/// error or a benchmark where it ran.
#[derive(Clone, Debug)]
pub struct GpuInfo {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    /// A CPU rasterizer (lavapipe, SwiftShader): prefers few workgroup barriers.
    pub software: bool,
}

/// The device, its queue and the caches that hang off it. Created once; everything else
/// borrows it. `Gpu::new` picks an adapter; `Gpu::from_device` takes one made elsewhere.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: GpuInfo,
    pub limits: wgpu::Limits,
    pub(crate) pipelines: Mutex<HashMap<String, (wgpu::ComputePipeline, wgpu::BindGroupLayout)>>,
    pub(crate) uniforms: Mutex<HashMap<Vec<u8>, wgpu::Buffer>>,
    /// Bind groups of encoders that opt in (`Encoder::cache_binds`), keyed by the pipeline,
    /// the parameters and each bound tensor's (buffer id, offset, size). An entry keeps its
    /// buffers alive: its owner (the trainer) calls `forget_bind_groups` when it drops or
    /// reallocates them, and the cache is cleared when it exceeds `MAX_BIND_GROUPS`.
    pub(crate) bind_groups: Mutex<HashMap<super::encoder::BindKey, wgpu::BindGroup>>,
    /// `WEBTUNE_NO_REUSE=1`: every scratch buffer is fresh, to tell a pooling bug from a
    /// kernel bug.
    pub no_reuse: bool,
    /// Bound in place of an optional argument a dispatch does not use. Bound writable, it
    /// stands for binding i's own spare (`spare[i]`, see `Encoder::dispatch`): WebGPU
    /// rejects a writable binding that overlaps any other binding of the same dispatch.
    pub dummy: Tensor,
    /// 16 bytes per binding index that an unused writable binding is bound to.
    pub(crate) spare: Vec<Tensor>,
    /// 16 zero bytes that no kernel writes: read where an
    /// optional input must read as zero (dropout's salt outside training).
    pub zero: Tensor,
    /// Matmul kernels from the CPU-adapter column of `ops::matmul::choose` (no workgroup
    /// memory or barriers). Chosen from the adapter; `WEBTUNE_MATMUL=gpu|cpu` overrides it.
    pub matmul_cpu: bool,
    /// The device has shader-f16 (requested wherever the adapter offers it).
    pub shader_f16: bool,
    /// The matmul table's f16 column (`Variant::LargeH`): `WEBTUNE_F16=1` on a device with
    /// shader-f16. Off by default: it rounds operands to f16, and no GPU measurement has
    /// yet shown it faster.
    pub matmul_f16: bool,
    /// The device has subgroup operations (requested wherever the adapter offers them).
    pub subgroups: bool,
    /// The skinny matmuls' subgroup reduction (`Variant::SkinnySg`; the same bits):
    /// `WEBTUNE_SUBGROUPS=1` on a device with subgroups. Off until a GPU measurement.
    pub matmul_subgroups: bool,
    /// Set by the device-lost callback (a driver reset, a browser reclaiming the GPU of a
    /// background tab, `device.destroy()`), so a caller can tell a lost device from a
    /// failing step and start over from a checkpoint.
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Dispatches, bind groups, buffers, uploads, readbacks and submits so far.
    pub counters: super::Counters,
}

impl Gpu {
    /// Request the best adapter and a device with every limit the adapter offers (a large
    /// model needs far more than WebGPU's 128 MiB default storage binding).
    pub async fn new() -> Result<Gpu> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                Error::Gpu(format!(
                    "no GPU adapter ({e}). In a browser, WebGPU needs Chrome/Edge 113+ or a recent \
                     Firefox/Safari with WebGPU enabled; natively, a Vulkan, Metal or DX12 driver \
                     (on Linux without a GPU: Mesa's lavapipe, package mesa-vulkan-drivers)"
                ))
            })?;
        let limits = adapter.limits();
        // Optional extras, asked for where offered; the f32 kernels never need them.
        let features = adapter.features() & (wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("webtune"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Gpu(format!("device request failed: {e}")))?;
        Ok(Gpu::from_device(&adapter.get_info(), device, queue))
    }

    /// Wrap a device created elsewhere (a test harness, the browser worker).
    pub fn from_device(info: &wgpu::AdapterInfo, device: wgpu::Device, queue: wgpu::Queue) -> Gpu {
        let lname = info.name.to_lowercase();
        let software = info.device_type == wgpu::DeviceType::Cpu
            || lname.contains("llvmpipe")
            || lname.contains("lavapipe")
            || lname.contains("swiftshader");
        let limits = device.limits();
        let small = |label: &str| {
            Tensor::whole(
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: 16,
                    usage: Self::usage(),
                    mapped_at_creation: false,
                }),
                4,
            )
        };
        let dummy = small("dummy");
        let spare = (0..limits.max_storage_buffers_per_shader_stage.min(32)).map(|_| small("spare")).collect();
        let zero = small("zero");
        let matmul_cpu = match std::env::var("WEBTUNE_MATMUL").as_deref() {
            Ok("gpu") => false,
            Ok("cpu") => true,
            // CPU adapters (SwiftShader, lavapipe): SmolLM2-135M full fine-tuning, batch 1 x 64
            // on lavapipe, 35.4 s per step tiled, 15.1 s register-blocked.
            _ => software,
        };
        let shader_f16 = device.features().contains(wgpu::Features::SHADER_F16);
        let matmul_f16 = shader_f16 && std::env::var("WEBTUNE_F16").as_deref() == Ok("1");
        let subgroups = device.features().contains(wgpu::Features::SUBGROUP);
        let matmul_subgroups = subgroups && std::env::var("WEBTUNE_SUBGROUPS").as_deref() == Ok("1");
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = lost.clone();
        device.set_device_lost_callback(move |_reason, _msg| flag.store(true, std::sync::atomic::Ordering::Relaxed));
        Gpu {
            counters: Default::default(),
            lost,
            matmul_cpu,
            shader_f16,
            matmul_f16,
            subgroups,
            matmul_subgroups,
            dummy,
            spare,
            zero,
            info: GpuInfo {
                name: info.name.clone(),
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                software,
            },
            device,
            queue,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            uniforms: Mutex::new(HashMap::new()),
            bind_groups: Mutex::new(HashMap::new()),
            no_reuse: std::env::var("WEBTUNE_NO_REUSE").map(|v| v == "1").unwrap_or(false),
        }
    }

    /// Pipelines built so far (one per kernel entry point and binding signature).
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.lock().unwrap().len()
    }

    /// Bind groups held by the cache (`Encoder::cache_binds`).
    pub fn cached_bind_groups(&self) -> usize {
        self.bind_groups.lock().unwrap().len()
    }

    /// Uniform buffers held by the cache (`Gpu::uniform`).
    pub fn cached_uniforms(&self) -> usize {
        self.uniforms.lock().unwrap().len()
    }

    /// Drop every cached bind group (and so the buffers only they held).
    pub fn forget_bind_groups(&self) {
        self.bind_groups.lock().unwrap().clear();
    }

    /// Whether the device was lost; every later call on it fails.
    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The largest tensor (in bytes) one binding can see.
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    /// Refuse an allocation the adapter cannot hold, before trying it.
    pub fn check_fits(&self, what: &str, bytes: u64) -> Result<()> {
        if bytes > self.max_binding() {
            return Err(Error::Limit {
                what: what.to_string(),
                need: bytes,
                have: self.max_binding(),
                limit: "maxStorageBufferBindingSize",
            });
        }
        Ok(())
    }

    fn usage() -> wgpu::BufferUsages {
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
    }

    /// A zero-filled tensor of `len` 32-bit elements.
    pub fn zeros(&self, label: &str, len: usize) -> Result<Tensor> {
        let bytes = (len.max(1) as u64 * 4).next_multiple_of(16);
        self.check_fits(label, bytes)?;
        self.counters.buffer(bytes);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: Self::usage(),
            mapped_at_creation: false,
        });
        Ok(Tensor::whole(buf, len))
    }

    pub fn upload_f32(&self, label: &str, data: &[f32]) -> Result<Tensor> {
        self.upload_bytes(label, bytemuck::cast_slice(data), data.len())
    }

    pub fn upload_u32(&self, label: &str, data: &[u32]) -> Result<Tensor> {
        self.upload_bytes(label, bytemuck::cast_slice(data), data.len())
    }

    fn upload_bytes(&self, label: &str, bytes: &[u8], len: usize) -> Result<Tensor> {
        self.check_fits(label, bytes.len() as u64)?;
        if bytes.is_empty() {
            return self.zeros(label, 0);
        }
        self.counters.buffer(bytes.len() as u64);
        self.counters.upload(bytes.len() as u64);
        let buf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytes,
            usage: Self::usage(),
        });
        Ok(Tensor::whole(buf, len))
    }

    /// Overwrite the start of a tensor from the host (ordered before the next submit).
    pub fn write_f32(&self, t: &Tensor, data: &[f32]) {
        assert!(data.len() <= t.len);
        if !data.is_empty() {
            self.counters.upload(data.len() as u64 * 4);
            self.queue.write_buffer(&t.buf, t.offset, bytemuck::cast_slice(data));
        }
    }

    pub fn write_u32(&self, t: &Tensor, data: &[u32]) {
        assert!(data.len() <= t.len);
        if !data.is_empty() {
            self.counters.upload(data.len() as u64 * 4);
            self.queue.write_buffer(&t.buf, t.offset, bytemuck::cast_slice(data));
        }
    }

    /// A uniform buffer holding `bytes`, shared by every dispatch with the same parameters:
    /// a training step re-uses the same shapes every time, so after the first step no
    /// uniform is allocated.
    pub(crate) fn uniform(&self, bytes: &[u8]) -> wgpu::Buffer {
        let mut cache = self.uniforms.lock().unwrap();
        if let Some(b) = cache.get(bytes) {
            return b.clone();
        }
        if cache.len() > 8192 {
            cache.clear();
        }
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().next_multiple_of(16).max(16), 0);
        self.counters.buffer(padded.len() as u64);
        self.counters.upload(padded.len() as u64);
        let buf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: &padded,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        cache.insert(bytes.to_vec(), buf.clone());
        buf
    }
}
