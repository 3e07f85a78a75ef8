//! Batches: the images of a message that one provider call renders together.
//!
//! A provider that renders several images per call (AUTOMATIC1111's `batch_size`, up to
//! the catalog model's `max_batch`) gives image i of the call the seed seed + i, as the
//! web UI does. So a batch is a run of the message's images whose requests are the same
//! but for consecutive seeds. A requested seed gives a message such a run (SendMessage
//! stores seed + position); random seeds do not, and their images are made one per call,
//! as are those of a provider or model that does not batch (a `max_batch` of 1).

use crate::providers::ImageRequest;

/// One image to make.
pub(super) struct Image {
    pub(super) generation_id: String,
    pub(super) request: ImageRequest,
    /// See [`image_deadline`](super::images::image_deadline).
    pub(super) deadline: tokio::time::Instant,
}

/// The images of one provider call: one, or several with consecutive seeds.
pub(super) struct Batch {
    /// Image i of the call is `generation_ids[i]`, made with the seed `request.seed + i`.
    pub(super) generation_ids: Vec<String>,
    /// The first image's request.
    pub(super) request: ImageRequest,
    /// The earliest of the images' deadlines: the call is all of theirs.
    pub(super) deadline: tokio::time::Instant,
}

/// Groups `images`, in the message's order, into batches of at most `max_batch` images
/// (the provider's limit for a request): an image joins the batch before it when its
/// request is that batch's but for the next seed.
pub(super) fn batches(images: Vec<Image>, max_batch: impl Fn(&ImageRequest) -> u32) -> Vec<Batch> {
    let mut batches: Vec<Batch> = Vec::new();
    for image in images {
        match batches.last_mut() {
            Some(batch) if batch.takes(&image, max_batch(&batch.request)) => {
                batch.generation_ids.push(image.generation_id);
                batch.deadline = batch.deadline.min(image.deadline);
            }
            _ => batches.push(Batch {
                generation_ids: vec![image.generation_id],
                request: image.request,
                deadline: image.deadline,
            }),
        }
    }
    batches
}

impl Batch {
    /// Whether `image` can be this call's next image: there is room, and its request is
    /// the batch's with the next seed. The provider adds seeds without wrapping, so a run
    /// that wraps past `u32::MAX` (as stored seeds do) ends the batch there.
    fn takes(&self, image: &Image, max_batch: u32) -> bool {
        let len = u32::try_from(self.generation_ids.len()).unwrap_or(u32::MAX);
        let Some(next_seed) = self.request.seed.checked_add(len) else {
            return false;
        };
        len < max_batch
            && image.request
                == ImageRequest {
                    seed: next_seed,
                    ..self.request.clone()
                }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ModelSettings;

    fn image(generation_id: &str, seed: u32) -> Image {
        Image {
            generation_id: generation_id.to_owned(),
            request: ImageRequest {
                model: "sdxl".to_owned(),
                prompt: "a red fox".to_owned(),
                negative_prompt: String::new(),
                width: 1024,
                height: 1024,
                seed,
                init_image: None,
                strength: 1.0,
                settings: ModelSettings::default(),
            },
            deadline: tokio::time::Instant::now(),
        }
    }

    /// The batches' generation ids, and each batch's first seed.
    fn grouped(images: Vec<Image>, max_batch: u32) -> Vec<(Vec<String>, u32)> {
        batches(images, |_| max_batch)
            .into_iter()
            .map(|batch| (batch.generation_ids, batch.request.seed))
            .collect()
    }

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|&id| id.to_owned()).collect()
    }

    #[test]
    fn consecutive_seeds_share_a_call_up_to_the_limit() {
        let images = || vec![image("a", 41), image("b", 42), image("c", 43)];
        assert_eq!(grouped(images(), 4), [(ids(&["a", "b", "c"]), 41)]);
        assert_eq!(
            grouped(images(), 2),
            [(ids(&["a", "b"]), 41), (ids(&["c"]), 43)]
        );
        // A provider or model that does not batch: one call per image, as before.
        assert_eq!(
            grouped(images(), 1),
            [(ids(&["a"]), 41), (ids(&["b"]), 42), (ids(&["c"]), 43)]
        );
    }

    #[test]
    fn random_or_broken_runs_of_seeds_are_made_apart() {
        // Random seeds; and a run with a gap (an image finished on an earlier delivery).
        let random = vec![image("a", 3_941_002), image("b", 17), image("c", 18)];
        assert_eq!(
            grouped(random, 4),
            [(ids(&["a"]), 3_941_002), (ids(&["b", "c"]), 17)]
        );
        let gap = vec![image("a", 41), image("c", 43)];
        assert_eq!(grouped(gap, 4), [(ids(&["a"]), 41), (ids(&["c"]), 43)]);
        // Stored seeds wrap at 2^32; the provider's seed + i would not.
        let wrapping = vec![image("a", u32::MAX), image("b", 0)];
        assert_eq!(
            grouped(wrapping, 4),
            [(ids(&["a"]), u32::MAX), (ids(&["b"]), 0)]
        );
    }

    #[test]
    fn only_the_same_request_shares_a_call() {
        let mut wide = image("b", 42);
        wide.request.width = 1536;
        assert_eq!(
            grouped(vec![image("a", 41), wide], 4),
            [(ids(&["a"]), 41), (ids(&["b"]), 42)]
        );
    }

    #[test]
    fn a_batch_has_its_earliest_deadline() {
        let mut later = image("b", 42);
        later.deadline += std::time::Duration::from_secs(5);
        let first = image("a", 41);
        let earliest = first.deadline;
        let batches = batches(vec![first, later], |_| 4);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].deadline, earliest);
    }
}
