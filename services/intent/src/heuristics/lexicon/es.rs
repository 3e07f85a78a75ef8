//! Spanish.

use super::Lexicon;

pub const LEXICON: Lexicon = Lexicon {
    code: "es",
    unspaced: false,
    markers: &["el", "la", "los", "las", "un", "una", "unos", "unas", "del", "y", "que", "con", "sin", "es", "esta", "este", "esto", "en", "por", "para", "mas", "muy", "su", "ahora", "al"],
    fillers: &["por favor", "porfa", "ahora", "y", "tambien", "pero", "vale", "ok", "gracias", "puedes", "podrias", "quiero que", "mejor"],
    edit_verbs: &["hazlo", "hazla", "haz que", "haz", "hazlos", "ponlo", "ponla", "pon", "ponle", "cambia", "cambialo", "cambiala", "cambiar", "convierte", "conviertelo", "conviertela", "vuelvelo", "vuelvela", "pinta", "pintalo", "pintala", "que sea", "deja", "dejalo", "transforma", "modifica", "reemplaza", "sustituye", "anade", "agrega", "quita", "elimina", "borra", "saca"],
    pronouns: &["lo", "la", "los", "las", "le", "esto", "eso"],
    remove: &["quita", "quitale", "quitalo", "elimina", "eliminalo", "borra", "borralo", "saca", "sin", "retira", "quitar", "eliminar"],
    add: &["anade", "anadele", "agrega", "agregale", "ponle", "incluye", "anadir", "agregar"],
    background: &["fondo", "el fondo"],
    styles: &["acuarela", "anime", "oleo", "dibujo animado", "caricatura", "boceto", "estilo", "realista", "pixel art", "acuarelas"],
    weather: &["lluvia", "lluvioso", "nieve", "nevado", "niebla", "tormenta", "nublado", "soleado", "invierno", "verano", "otono"],
    lighting: &["oscuro", "oscura", "claro", "clara", "brillante", "luz", "iluminacion", "sombras"],
    comparatives: &["mas", "menos"],
    colors: &[("rojo", "red"), ("roja", "red"), ("azul", "blue"), ("verde", "green"), ("amarillo", "yellow"), ("amarilla", "yellow"), ("naranja", "orange"), ("morado", "purple"), ("morada", "purple"), ("rosa", "pink"), ("rosado", "pink"), ("negro", "black"), ("negra", "black"), ("blanco", "white"), ("blanca", "white"), ("gris", "gray"), ("marron", "brown"), ("dorado", "golden"), ("dorada", "golden"), ("plateado", "silver"), ("violeta", "violet")],
    times: &[("noche", "at night"), ("nocturno", "at night"), ("dia", "during the day"), ("atardecer", "at sunset"), ("puesta de sol", "at sunset"), ("anochecer", "at dusk"), ("amanecer", "at sunrise"), ("manana", "in the morning"), ("mediodia", "at noon")],
    rerolls: &["otra", "otro", "otra vez", "otra mas", "otro mas", "una mas", "uno mas", "de nuevo", "otra por favor", "hazlo de nuevo", "hazla de nuevo", "repite", "repitelo", "otra version", "genera otra", "dame otra", "otra imagen"],
    rejections: &["no", "olvida eso", "olvidalo", "olvida", "mejor", "en realidad", "eso no", "no es eso", "dejalo", "nada", "cambio de idea", "mejor no"],
    requests: &["dibuja", "dibujame", "genera", "generame", "crea", "creame", "quiero", "haz un", "haz una", "hazme", "pinta un", "pinta una", "muestrame", "imagina"],
    instead: &["en vez de", "en lugar de"],
};
