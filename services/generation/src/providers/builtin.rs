//! The `builtin` provider: a local renderer that draws a deterministic picture from the
//! prompt and the seed.
//!
//! It exists so that the whole mesh runs offline, on a laptop or in CI, with no GPU and
//! no API key, and still produces real, distinct PNGs of the requested size that flow
//! through storage and events like any model's output. It is not trying to look good.
//!
//! The picture is a pure function of (prompt, seed, width, height, init image,
//! strength), byte for byte, on every platform and every Rust release:
//!
//! - the prompt picks the palette through FNV-1a, implemented here, because std's
//!   `DefaultHasher` is explicitly allowed to change between releases;
//! - the seed places the shapes through splitmix64, also implemented here;
//! - all drawing is integer arithmetic, so no floating-point library function (whose
//!   last bit may differ between platforms) touches a pixel. The only float, the
//!   img2img strength, is turned into an integer weight once.
//!
//! A new seed thus keeps the prompt's colours and moves the shapes around, roughly what
//! a user expects from "another one like this".

use std::io::Cursor;

use bytes::Bytes;
use tokio::sync::watch;

use super::{ImageProvider, ImageRequest, ProviderError, report};

/// The largest side it draws: far beyond any model's limit, and small enough that an
/// image (4096 × 4096 × 3 bytes, 48 MiB) cannot exhaust a worker's memory.
pub const MAX_SIDE: u32 = 4096;

/// Above this many pixels, drawing and encoding go to the blocking pool: they take a
/// few milliseconds or more, which would stall every other task on the worker thread.
/// Below it, the hop to another thread costs more than the work.
const BLOCKING_PIXELS: u64 = 256 * 256;

/// The local renderer. Stateless: build one and share it.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuiltinProvider;

impl BuiltinProvider {
    pub fn new() -> Self {
        Self
    }
}

#[tonic::async_trait]
impl ImageProvider for BuiltinProvider {
    /// Reports 0, 50 once the fresh picture is drawn, and 100 with the PNG.
    ///
    /// Cancel-safe: a dropped call abandons a pure computation, which at worst finishes
    /// on the blocking pool and is thrown away.
    async fn generate(
        &self,
        request: &ImageRequest,
        progress: &watch::Sender<u32>,
    ) -> Result<Bytes, ProviderError> {
        let (width, height) = checked_size(request)?;
        let strength = match request.init_image {
            Some(_) => checked_strength(request)?,
            None => 256,
        };
        report(progress, 0);
        let pixels = u64::from(width) * u64::from(height);

        let prompt = request.prompt.clone();
        let seed = request.seed;
        let fresh = off_thread(pixels, move || Ok(draw(&prompt, seed, width, height))).await?;
        report(progress, 50);

        let init_image = request.init_image.clone();
        let png = off_thread(pixels, move || {
            let picture = match init_image {
                Some(init) => {
                    let init = decode_rgb(&init)
                        .map_err(|reason| {
                            ProviderError::permanent(format!(
                                "builtin: the init image is not a usable PNG: {reason}"
                            ))
                        })?
                        .resized(width, height);
                    blend(&init, &fresh, strength)
                }
                None => fresh,
            };
            encode_png(&picture)
        })
        .await?;
        report(progress, 100);
        Ok(png)
    }
}

fn checked_size(request: &ImageRequest) -> Result<(u32, u32), ProviderError> {
    let (width, height) = (request.width, request.height);
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(ProviderError::permanent(format!(
            "builtin: size {width}x{height} is outside 1x1..{MAX_SIDE}x{MAX_SIDE}"
        )));
    }
    Ok((width, height))
}

/// The strength as a weight out of 256 for the fresh picture.
fn checked_strength(request: &ImageRequest) -> Result<u32, ProviderError> {
    let strength = request.strength;
    if !strength.is_finite() {
        return Err(ProviderError::permanent(format!(
            "builtin: strength {strength} is not a number between 0 and 1"
        )));
    }
    // After the clamp the value is within 0..=256, so the cast is exact.
    Ok((strength.clamp(0.0, 1.0) * 256.0).round() as u32)
}

/// Runs `work` on the blocking pool when the image is large, inline when it is small.
async fn off_thread<T, F>(pixels: u64, work: F) -> Result<T, ProviderError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ProviderError> + Send + 'static,
{
    if pixels <= BLOCKING_PIXELS {
        return work();
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ProviderError::permanent(format!("builtin: the renderer failed: {err}")))?
}

/// An RGB8 picture, rows top to bottom.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Canvas {
    width: u32,
    height: u32,
    /// `width * height * 3` bytes.
    rgb: Vec<u8>,
}

type Rgb = [u8; 3];

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            rgb: vec![0; pixel_count(width, height) * 3],
        }
    }

    fn offset(&self, x: u32, y: u32) -> usize {
        (y as usize * self.width as usize + x as usize) * 3
    }

    fn set(&mut self, x: u32, y: u32, colour: Rgb) {
        let at = self.offset(x, y);
        self.rgb[at..at + 3].copy_from_slice(&colour);
    }

    /// Mixes `colour` into the pixel with weight `alpha` out of 256.
    fn tint(&mut self, x: u32, y: u32, colour: Rgb, alpha: u32) {
        let at = self.offset(x, y);
        for (channel, value) in self.rgb[at..at + 3].iter_mut().zip(colour) {
            *channel = mix(*channel, value, alpha);
        }
    }

    /// Nearest-neighbour scaling: cheap, and the init image of an edit is the previous
    /// image at (nearly always) the same size, so quality hardly matters.
    fn resized(self, width: u32, height: u32) -> Self {
        if self.width == width && self.height == height {
            return self;
        }
        let mut out = Canvas::new(width, height);
        for y in 0..height {
            let source_y = scale(y, height, self.height);
            for x in 0..width {
                let source_x = scale(x, width, self.width);
                let at = self.offset(source_x, source_y);
                out.set(x, y, [self.rgb[at], self.rgb[at + 1], self.rgb[at + 2]]);
            }
        }
        out
    }
}

fn pixel_count(width: u32, height: u32) -> usize {
    width as usize * height as usize
}

/// Maps coordinate `i` of a side of `from` pixels onto a side of `to` pixels.
fn scale(i: u32, from: u32, to: u32) -> u32 {
    // Below `to` because `i < from`; computed in u64 so 4096 × 4096 cannot overflow.
    (u64::from(i) * u64::from(to) / u64::from(from)) as u32
}

/// `a` moved towards `b` by `weight` out of 256, rounded.
fn mix(a: u8, b: u8, weight: u32) -> u8 {
    let weight = weight.min(256);
    let value = (u32::from(a) * (256 - weight) + u32::from(b) * weight + 128) >> 8;
    value.min(255) as u8
}

/// FNV-1a, 64 bits: tiny, stable forever, and spreads short prompts well enough to pick
/// colours.
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// splitmix64: a small PRNG whose every output is a good hash of its state, so even
/// adjacent seeds give unrelated pictures.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `low..=high` (`high >= low`). The modulo bias is irrelevant here.
    fn between(&mut self, low: u32, high: u32) -> u32 {
        let span = u64::from(high - low) + 1;
        low + (self.next() % span) as u32
    }

    fn colour(&mut self) -> Rgb {
        colour(self.next())
    }
}

/// A colour from the low 24 bits of `bits`, kept out of the darkest and brightest range
/// so shapes stay visible on any background.
fn colour(bits: u64) -> Rgb {
    let channel = |shift: u32| (24 + ((bits >> shift) & 0xff) * 208 / 255) as u8;
    [channel(0), channel(8), channel(16)]
}

/// Draws the fresh picture for `prompt` and `seed`.
fn draw(prompt: &str, seed: u32, width: u32, height: u32) -> Canvas {
    let prompt_hash = fnv1a(prompt.as_bytes());
    let mut palette = SplitMix64(prompt_hash);
    let (from, to) = (palette.colour(), palette.colour());
    let mut rng = SplitMix64(prompt_hash ^ u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15));

    let mut canvas = Canvas::new(width, height);
    gradient(&mut canvas, from, to, &mut rng);
    let short_side = width.min(height);
    for _ in 0..rng.between(1, 3) {
        band(&mut canvas, &mut rng);
    }
    for _ in 0..rng.between(3, 8) {
        circle(&mut canvas, short_side, &mut rng);
    }
    canvas
}

/// A linear gradient from `from` to `to` in a seeded direction.
fn gradient(canvas: &mut Canvas, from: Rgb, to: Rgb, rng: &mut SplitMix64) {
    // Weights of the x and y axes, not both zero: horizontal, vertical or diagonal.
    let weight_x = u64::from(rng.between(0, 3));
    let weight_y = if weight_x == 0 {
        u64::from(rng.between(1, 3))
    } else {
        u64::from(rng.between(0, 3))
    };
    let reversed = rng.next() & 1 == 1;
    let span_x = u64::from(canvas.width.saturating_sub(1).max(1));
    let span_y = u64::from(canvas.height.saturating_sub(1).max(1));
    for y in 0..canvas.height {
        let along_y = u64::from(y) * 256 / span_y;
        for x in 0..canvas.width {
            let along_x = u64::from(x) * 256 / span_x;
            // Within 0..=256: a weighted mean of two values in that range.
            let mut t = ((along_x * weight_x + along_y * weight_y) / (weight_x + weight_y)) as u32;
            if reversed {
                t = 256 - t;
            }
            canvas.set(
                x,
                y,
                [
                    mix(from[0], to[0], t),
                    mix(from[1], to[1], t),
                    mix(from[2], to[2], t),
                ],
            );
        }
    }
}

/// A translucent horizontal or vertical stripe across the whole picture.
fn band(canvas: &mut Canvas, rng: &mut SplitMix64) {
    let horizontal = rng.next() & 1 == 0;
    let side = if horizontal {
        canvas.height
    } else {
        canvas.width
    };
    let thickness = rng.between((side / 40).max(1), (side / 8).max(1));
    let start = rng.between(0, side - 1);
    let end = start.saturating_add(thickness).min(side);
    let colour = rng.colour();
    let alpha = rng.between(48, 112);
    for along in start..end {
        if horizontal {
            for x in 0..canvas.width {
                canvas.tint(x, along, colour, alpha);
            }
        } else {
            for y in 0..canvas.height {
                canvas.tint(along, y, colour, alpha);
            }
        }
    }
}

/// A translucent disc, only its bounding box visited.
fn circle(canvas: &mut Canvas, short_side: u32, rng: &mut SplitMix64) {
    let radius = i64::from(rng.between((short_side / 16).max(1), (short_side / 4).max(1)));
    let centre_x = i64::from(rng.between(0, canvas.width - 1));
    let centre_y = i64::from(rng.between(0, canvas.height - 1));
    let colour = rng.colour();
    let alpha = rng.between(96, 200);
    let (width, height) = (i64::from(canvas.width), i64::from(canvas.height));
    for y in (centre_y - radius).max(0)..=(centre_y + radius).min(height - 1) {
        let dy = y - centre_y;
        // The disc's half-width on this row; isqrt keeps it exact and portable.
        let half = (radius * radius - dy * dy).unsigned_abs().isqrt() as i64;
        for x in (centre_x - half).max(0)..=(centre_x + half).min(width - 1) {
            // Both within the canvas, so within u32.
            canvas.tint(x as u32, y as u32, colour, alpha);
        }
    }
}

/// `init * (1 - strength) + fresh * strength`, strength as a weight out of 256, so 0
/// gives the init image exactly and 256 the fresh picture exactly.
fn blend(init: &Canvas, fresh: &Canvas, strength: u32) -> Canvas {
    let rgb = init
        .rgb
        .iter()
        .zip(&fresh.rgb)
        .map(|(init, fresh)| mix(*init, *fresh, strength))
        .collect();
    Canvas {
        width: fresh.width,
        height: fresh.height,
        rgb,
    }
}

/// Any 8- or 16-bit PNG (grey, palette, with or without alpha) as RGB8; alpha is dropped,
/// as diffusion models do with init images.
fn decode_rgb(png: &[u8]) -> Result<Canvas, String> {
    let mut decoder = png::Decoder::new(Cursor::new(png));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|err| err.to_string())?;
    let (width, height) = (reader.info().width, reader.info().height);
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(format!(
            "{width}x{height} is larger than {MAX_SIDE}x{MAX_SIDE}"
        ));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "the image is too large".to_owned())?;
    let mut buffer = vec![0; size];
    let info = reader
        .next_frame(&mut buffer)
        .map_err(|err| err.to_string())?;
    let data = &buffer[..info.buffer_size()];
    let rgb: Vec<u8> = match info.color_type {
        png::ColorType::Rgb => data.to_vec(),
        png::ColorType::Rgba => data
            .chunks_exact(4)
            .flat_map(|pixel| [pixel[0], pixel[1], pixel[2]])
            .collect(),
        png::ColorType::Grayscale => data.iter().flat_map(|grey| [*grey; 3]).collect(),
        png::ColorType::GrayscaleAlpha => data
            .chunks_exact(2)
            .flat_map(|pixel| [pixel[0]; 3])
            .collect(),
        // The EXPAND transformation turns palettes into RGB(A).
        png::ColorType::Indexed => return Err("an unexpanded palette image".to_owned()),
    };
    if rgb.len() != pixel_count(width, height) * 3 {
        return Err("the pixel data does not match the header".to_owned());
    }
    Ok(Canvas { width, height, rgb })
}

fn encode_png(canvas: &Canvas) -> Result<Bytes, ProviderError> {
    let failed = |err: png::EncodingError| {
        ProviderError::permanent(format!("builtin: encoding the PNG failed: {err}"))
    };
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, canvas.width, canvas.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Smooth gradients compress well even at the fast level, and a render should not
    // spend more time in deflate than in drawing.
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(failed)?;
    writer.write_image_data(&canvas.rgb).map_err(failed)?;
    writer.finish().map_err(failed)?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompt: &str, seed: u32, width: u32, height: u32) -> ImageRequest {
        ImageRequest {
            model: "builtin".to_owned(),
            prompt: prompt.to_owned(),
            negative_prompt: String::new(),
            width,
            height,
            seed,
            init_image: None,
            strength: 0.6,
            settings: Default::default(),
        }
    }

    async fn render(request: &ImageRequest) -> Bytes {
        let (progress, _watcher) = watch::channel(0);
        render_with(request, &progress).await
    }

    async fn render_with(request: &ImageRequest, progress: &watch::Sender<u32>) -> Bytes {
        BuiltinProvider::new()
            .generate(request, progress)
            .await
            .expect("a picture")
    }

    fn decoded(png: &[u8]) -> Canvas {
        decode_rgb(png).expect("a valid PNG")
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The first outputs for state 0 in the reference implementation.
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[tokio::test]
    async fn the_png_has_exactly_the_requested_size() {
        for (width, height) in [(64, 64), (2048, 512), (1, 1), (3, 700)] {
            let png = render(&request("a red fox in the snow", 7, width, height)).await;
            let canvas = decoded(&png);
            assert_eq!((canvas.width, canvas.height), (width, height));
        }
    }

    #[tokio::test]
    async fn the_same_inputs_give_the_same_bytes() {
        for (width, height) in [(64, 64), (2048, 512)] {
            let first = render(&request("a red fox in the snow", 7, width, height)).await;
            let second = render(&request("a red fox in the snow", 7, width, height)).await;
            assert_eq!(first, second, "{width}x{height}");
        }
    }

    #[tokio::test]
    async fn another_seed_or_prompt_gives_another_picture() {
        let base = render(&request("a red fox in the snow", 7, 64, 64)).await;
        let reseeded = render(&request("a red fox in the snow", 8, 64, 64)).await;
        let reworded = render(&request("a blue whale at dusk", 7, 64, 64)).await;
        assert_ne!(base, reseeded);
        assert_ne!(base, reworded);
        assert_ne!(reseeded, reworded);
    }

    #[tokio::test]
    async fn the_picture_is_not_a_flat_colour() {
        let canvas = decoded(&render(&request("a red fox in the snow", 7, 64, 64)).await);
        let first: Rgb = [canvas.rgb[0], canvas.rgb[1], canvas.rgb[2]];
        let distinct = canvas
            .rgb
            .chunks_exact(3)
            .filter(|pixel| *pixel != first)
            .count();
        assert!(distinct > 64 * 64 / 2, "{distinct} pixels differ");
    }

    #[tokio::test]
    async fn progress_ends_at_100() {
        let (progress, mut watcher) = watch::channel(77);
        watcher.borrow_and_update();

        render_with(&request("a red fox", 1, 64, 64), &progress).await;

        assert!(watcher.has_changed().expect("the sender lives"));
        assert_eq!(*watcher.borrow(), 100);
    }

    #[tokio::test]
    async fn img2img_strength_0_keeps_the_init_image_and_1_draws_afresh() {
        let init = render(&request("a red fox in the snow", 1, 64, 64)).await;
        let fresh = render(&request("the same fox at night", 2, 64, 64)).await;
        let edit = |strength: f32| ImageRequest {
            init_image: Some(init.clone()),
            strength,
            ..request("the same fox at night", 2, 64, 64)
        };

        let kept = render(&edit(0.0)).await;
        assert_eq!(decoded(&kept), decoded(&init));

        let redrawn = render(&edit(1.0)).await;
        assert_eq!(redrawn, fresh);

        let between = decoded(&render(&edit(0.5)).await);
        assert_ne!(between, decoded(&init));
        assert_ne!(between, decoded(&fresh));
    }

    #[tokio::test]
    async fn img2img_resizes_an_init_image_of_another_size() {
        let init = render(&request("a red fox in the snow", 1, 32, 16)).await;
        let edit = ImageRequest {
            init_image: Some(init.clone()),
            strength: 0.0,
            ..request("a red fox in the snow", 1, 64, 64)
        };

        let out = decoded(&render(&edit).await);

        assert_eq!((out.width, out.height), (64, 64));
        // Nearest neighbour: each init pixel becomes a 2 × 4 block.
        assert_eq!(out, decoded(&init).resized(64, 64));
        let source = decoded(&init);
        assert_eq!(
            out.rgb[out.offset(63, 63)..][..3],
            source.rgb[source.offset(31, 15)..][..3]
        );
    }

    #[tokio::test]
    async fn img2img_accepts_grey_and_alpha_pngs() {
        let mut grey_alpha = Vec::new();
        let mut encoder = png::Encoder::new(&mut grey_alpha, 2, 1);
        encoder.set_color(png::ColorType::GrayscaleAlpha);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("a header");
        writer
            .write_image_data(&[10, 255, 200, 0])
            .expect("the pixels");
        writer.finish().expect("the end");

        let edit = ImageRequest {
            init_image: Some(Bytes::from(grey_alpha)),
            strength: 0.0,
            ..request("grey", 1, 2, 1)
        };
        let out = decoded(&render(&edit).await);
        assert_eq!(out.rgb, vec![10, 10, 10, 200, 200, 200]);
    }

    #[tokio::test]
    async fn unusable_requests_fail_permanently() {
        let (progress, _watcher) = watch::channel(0);
        let provider = BuiltinProvider::new();
        let not_png = ImageRequest {
            init_image: Some(Bytes::from_static(b"GIF89a")),
            ..request("x", 1, 8, 8)
        };
        let nan_strength = ImageRequest {
            init_image: Some(Bytes::from_static(b"GIF89a")),
            strength: f32::NAN,
            ..request("x", 1, 8, 8)
        };
        for bad in [
            request("x", 1, 0, 8),
            request("x", 1, 8, 0),
            request("x", 1, MAX_SIDE + 1, 8),
            not_png,
            nan_strength,
        ] {
            let err = provider
                .generate(&bad, &progress)
                .await
                .expect_err("refused");
            assert!(!err.is_retryable(), "{err}");
        }
    }
}
