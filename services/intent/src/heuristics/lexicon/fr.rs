//! French.

use super::Lexicon;

pub const LEXICON: Lexicon = Lexicon {
    code: "fr",
    unspaced: false,
    markers: &["le", "la", "les", "un", "une", "des", "du", "de", "et", "avec", "sans", "est", "ce", "cette", "dans", "sur", "plus", "tres", "maintenant", "l", "d", "au", "aux", "en"],
    fillers: &["s'il te plait", "s il te plait", "stp", "s'il vous plait", "svp", "maintenant", "et", "aussi", "mais", "ok", "merci", "peux tu", "pourrais tu", "tu peux"],
    edit_verbs: &["rends", "rends le", "rends la", "fais", "fais le", "fais la", "mets", "mets le", "change", "changer", "transforme", "transforme le", "modifie", "remplace", "ajoute", "enleve", "supprime", "retire", "peins", "colore", "passe", "passe le"],
    pronouns: &["le", "la", "les", "l", "ca", "cela"],
    remove: &["enleve", "enlever", "supprime", "supprimer", "retire", "retirer", "efface", "sans", "ote"],
    add: &["ajoute", "ajouter", "ajoutes", "mets", "rajoute", "inclus"],
    background: &["fond", "arriere plan", "decor"],
    styles: &["aquarelle", "anime", "peinture a l'huile", "huile", "dessin anime", "croquis", "style", "realiste", "manga", "bande dessinee"],
    weather: &["pluie", "pluvieux", "neige", "enneige", "brouillard", "orage", "nuageux", "ensoleille", "hiver", "ete", "automne"],
    lighting: &["sombre", "clair", "claire", "lumineux", "lumineuse", "lumiere", "eclairage", "ombres"],
    comparatives: &["plus", "moins"],
    colors: &[("rouge", "red"), ("bleu", "blue"), ("bleue", "blue"), ("vert", "green"), ("verte", "green"), ("jaune", "yellow"), ("orange", "orange"), ("violet", "purple"), ("violette", "purple"), ("rose", "pink"), ("noir", "black"), ("noire", "black"), ("blanc", "white"), ("blanche", "white"), ("gris", "gray"), ("grise", "gray"), ("marron", "brown"), ("dore", "golden"), ("doree", "golden"), ("argente", "silver")],
    times: &[("nuit", "at night"), ("de nuit", "at night"), ("jour", "during the day"), ("de jour", "during the day"), ("coucher de soleil", "at sunset"), ("coucher du soleil", "at sunset"), ("lever du soleil", "at sunrise"), ("lever de soleil", "at sunrise"), ("aube", "at dawn"), ("matin", "in the morning"), ("soir", "in the evening"), ("crepuscule", "at dusk")],
    rerolls: &["encore", "encore une", "encore un", "une autre", "un autre", "une de plus", "encore une fois", "refais", "refais le", "recommence", "une autre version", "autre", "une autre s'il te plait", "une autre stp", "genere en une autre"],
    rejections: &["non", "oublie ca", "oublie", "laisse tomber", "en fait", "pas ca", "ce n'est pas ca", "plutot"],
    requests: &["dessine", "dessine moi", "genere", "genere moi", "cree", "cree moi", "je veux", "fais moi", "montre moi", "imagine", "peins moi"],
    instead: &["au lieu de", "a la place de"],
};
