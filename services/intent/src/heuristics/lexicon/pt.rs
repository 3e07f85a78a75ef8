//! Portuguese.

use super::Lexicon;

pub const LEXICON: Lexicon = Lexicon {
    code: "pt",
    unspaced: false,
    markers: &["o", "os", "as", "um", "uma", "uns", "umas", "do", "da", "dos", "das", "e", "com", "sem", "em", "no", "na", "mais", "muito", "agora", "isso", "esta", "ao", "pelo", "pela"],
    fillers: &["por favor", "agora", "e", "tambem", "mas", "ok", "obrigado", "obrigada", "pode", "voce pode", "podes"],
    edit_verbs: &["deixe", "deixa", "deixe o", "deixe a", "faca", "faz", "faca com que", "coloque", "coloca", "poe", "mude", "muda", "mudar", "troque", "troca", "transforme", "transforma", "pinte", "pinta", "substitua", "adicione", "adiciona", "remova", "remove", "tire", "tira", "apague", "torne"],
    pronouns: &["o", "a", "isso", "isto", "ele", "ela"],
    remove: &["remova", "remove", "remover", "tire", "tira", "tirar", "apague", "apaga", "sem", "retire", "elimine"],
    add: &["adicione", "adiciona", "adicionar", "coloque", "coloca", "acrescente", "acrescenta", "inclua", "poe"],
    background: &["fundo", "o fundo", "cenario"],
    styles: &["aquarela", "anime", "pintura a oleo", "oleo", "desenho animado", "esboco", "estilo", "realista", "quadrinhos"],
    weather: &["chuva", "chuvoso", "neve", "nevando", "nevoa", "neblina", "tempestade", "nublado", "ensolarado", "inverno", "verao", "outono"],
    lighting: &["escuro", "escura", "claro", "clara", "brilhante", "luz", "iluminacao", "sombras"],
    comparatives: &["mais", "menos"],
    colors: &[("vermelho", "red"), ("vermelha", "red"), ("azul", "blue"), ("verde", "green"), ("amarelo", "yellow"), ("amarela", "yellow"), ("laranja", "orange"), ("roxo", "purple"), ("roxa", "purple"), ("rosa", "pink"), ("preto", "black"), ("preta", "black"), ("branco", "white"), ("branca", "white"), ("cinza", "gray"), ("marrom", "brown"), ("dourado", "golden"), ("dourada", "golden"), ("prateado", "silver")],
    times: &[("noite", "at night"), ("a noite", "at night"), ("de noite", "at night"), ("dia", "during the day"), ("de dia", "during the day"), ("por do sol", "at sunset"), ("entardecer", "at sunset"), ("anoitecer", "at dusk"), ("amanhecer", "at sunrise"), ("nascer do sol", "at sunrise"), ("manha", "in the morning")],
    rerolls: &["outra", "outro", "outra vez", "mais uma", "mais um", "de novo", "outra por favor", "faca de novo", "faz de novo", "repete", "repita", "outra versao", "gere outra", "me da outra", "outra imagem"],
    rejections: &["nao", "esquece isso", "esquece", "esqueca", "deixa pra la", "na verdade", "nao e isso", "melhor"],
    requests: &["desenhe", "desenha", "gere", "gera", "crie", "cria", "quero", "faca um", "faca uma", "me mostre", "imagine"],
    instead: &["em vez de", "ao inves de", "no lugar de"],
};
